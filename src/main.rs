fn main() {
    std::process::exit(locklab::app::main());
}
