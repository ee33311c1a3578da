//! From the events buyers report to critical sections (grant to release), and the flags that
//! make the race happen on every run.

use std::sync::{Arc, Mutex};

use super::shop::Event;
use crate::check::setnx_race::Section;

/// A one-way flag tasks can wait for: "another buyer is paying", "the first holder is done
/// with the lock".
#[derive(Default)]
pub struct Flag {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Flag {
    pub fn set(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Turns a buyer's events into critical sections.
#[derive(Clone)]
pub struct Recorder {
    pub buyer: String,
    pub sections: Arc<Mutex<Vec<Section>>>,
    pub open: Option<usize>,
    /// Told when this buyer starts paying (the in-process buyers; not the first holder).
    pub paying: Option<Arc<Flag>>,
}

impl Recorder {
    pub fn on(&mut self, e: &Event) {
        let Ok(mut sections) = self.sections.lock() else {
            return;
        };
        match e {
            Event::Granted {
                value,
                at_ms,
                waited_ms,
            } => {
                sections.push(Section {
                    buyer: self.buyer.clone(),
                    value: value.clone(),
                    granted_ms: *at_ms,
                    waited_ms: *waited_ms,
                    released_ms: None,
                    deleted: None,
                });
                self.open = Some(sections.len() - 1);
            }
            Event::Released { at_ms, deleted } => {
                if let Some(s) = self.open.take().and_then(|i| sections.get_mut(i)) {
                    s.released_ms = Some(*at_ms);
                    s.deleted = deleted.clone();
                }
            }
            Event::Paying => {
                if let Some(p) = &self.paying {
                    p.set();
                }
            }
            Event::Done { .. } => {}
        }
    }

    /// The value of the section still open, if any.
    pub fn open_value(&self) -> Option<String> {
        let i = self.open?;
        self.sections.lock().ok()?.get(i).map(|s| s.value.clone())
    }
}
