//! The first holder: a process of its own (`locklab __worker setnx-race`, lock-watchdog's too)
//! so it can crash, pause or hang for real while it holds the lock, and locklab's handle on it.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SetnxRace;
use super::recorder::Recorder;
use super::shop::{Event, Shop};
use crate::env::postgres::PgTarget;
use crate::env::redis::RedisTarget;
use crate::env::worker::WorkerIo;
use crate::fault::Victim;
use crate::scenario::{Code, VariantCtx};

/// What the holder process is told.
#[derive(Serialize, Deserialize)]
struct HolderConfig {
    pg: PgTarget,
    redis: RedisTarget,
    app: String,
    shop: Shop,
    /// Its work never ends (lock-watchdog's hung worker): the process lives, and so does
    /// whatever renews its lock.
    #[serde(default)]
    hang: bool,
}

/// The holder process: one purchase, its events reported as they happen.
pub async fn holder_main(io: WorkerIo) -> anyhow::Result<()> {
    let cfg: HolderConfig = io.config()?;
    let pg = cfg.pg.connect(&cfg.app).await?;
    let mut con = cfg.redis.connect().await?;
    // A hung worker waits, after its payment, for a flag nobody sets.
    let never = super::recorder::Flag::default();
    let hang = cfg.hang.then_some(&never);
    let result = cfg
        .shop
        .buy(&pg, &mut con, "holder", 0.0, hang, &mut |e| io.emit(&e))
        .await;
    io.emit(&Event::Done {
        error: result.err().map(|e| e.class),
    });
    Ok(())
}

pub struct Holder {
    pub victim: Victim,
    pub recorder: Recorder,
}

impl Holder {
    pub async fn start(
        ctx: &VariantCtx<'_>,
        shop: &Shop,
        recorder: Recorder,
        hang: bool,
    ) -> anyhow::Result<Holder> {
        let env = ctx.env;
        let config = HolderConfig {
            pg: env.pg.clone(),
            redis: env.redis()?.clone(),
            app: ctx.app("w/holder"),
            shop: shop.clone(),
            hang,
        };
        let worker = env.spawn_worker(SetnxRace::NAME, &config).await?;
        Ok(Holder {
            victim: Victim::Process(Box::new(worker)),
            recorder,
        })
    }

    /// The next event, recorded; `None` when the holder exited or `until` passed.
    pub async fn next(&mut self, until: Instant) -> Option<Event> {
        let e = self.victim.worker()?.next::<Event>(until).await.ok()??;
        self.recorder.on(&e);
        Some(e)
    }
}
