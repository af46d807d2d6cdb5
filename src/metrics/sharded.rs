//! The per-frame counters (`frames_total`, `bytes_total`, `messages_total`), sharded per thread.
//!
//! Every relay wake-up adds its session's [`Tally`] to these counters. With one shared atomic per
//! label, the relay threads took turns owning the same cache lines: the 64-byte benchmark ran
//! 2 % faster with the flush switched off (docs/PERFORMANCE.md). So each thread adds into a
//! shard of its own, and a scrape sums the shards: writers never share a line, and a scrape
//! still sees every count flushed before it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

use super::{OPCODES, Tally, direction_label};
use crate::Side;
use crate::frame;

/// One thread's counts, alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
pub struct Shard {
    frames: [[AtomicU64; OPCODES.len()]; 2],
    bytes: [AtomicU64; 2],
    messages: [AtomicU64; 2],
}

impl Shard {
    /// Adds a session's unflushed counts and clears them.
    pub fn flush(&self, tally: &mut Tally) {
        for d in 0..2 {
            for (op, n) in tally.frames[d].iter_mut().enumerate() {
                if *n != 0 {
                    self.frames[d][op].fetch_add(std::mem::take(n), Ordering::Relaxed);
                }
            }
            for (total, n) in [
                (&self.bytes[d], &mut tally.bytes[d]),
                (&self.messages[d], &mut tally.messages[d]),
            ] {
                if *n != 0 {
                    total.fetch_add(std::mem::take(n), Ordering::Relaxed);
                }
            }
        }
        tally.dirty = false;
    }
}

type Shards = Mutex<Vec<Arc<Shard>>>;

thread_local! {
    /// This thread's shard of each live [`FrameCounters`] (tests run many proxies per process).
    static LOCAL: RefCell<Vec<(Weak<Shards>, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// The three families, summed over the shards at scrape time. Clones share the shards: the
/// registry owns one, [`super::Metrics`] hands out shards from another.
#[derive(Clone)]
pub struct FrameCounters {
    shards: Arc<Shards>,
    /// Never incremented: they give the registry its descriptors, and each scrape's families
    /// are built from fresh copies of the same options.
    templates: [IntCounterVec; 3],
}

const FRAMES: (&str, &str, &[&str]) = (
    "frames_total",
    "Frames received, by direction and opcode (pings and pongs are answered, not relayed).",
    &["direction", "opcode"],
);
const BYTES: (&str, &str, &[&str]) = (
    "bytes_total",
    "Frame bytes (headers and payload) relayed, by direction.",
    &["direction"],
);
const MESSAGES: (&str, &str, &[&str]) = (
    "messages_total",
    "Complete data messages relayed (final fragments), by direction.",
    &["direction"],
);

fn families() -> Result<[IntCounterVec; 3], prometheus::Error> {
    let new = |(name, help, labels): (&str, &str, &[&str])| {
        IntCounterVec::new(Opts::new(name, help), labels)
    };
    Ok([new(FRAMES)?, new(BYTES)?, new(MESSAGES)?])
}

impl FrameCounters {
    /// Counters with no shard yet.
    ///
    /// # Errors
    /// Invalid metric options, which only a programming mistake can cause.
    pub fn new() -> Result<FrameCounters, prometheus::Error> {
        Ok(FrameCounters {
            shards: Arc::default(),
            templates: families()?,
        })
    }

    /// The calling thread's shard, created on first use.
    pub fn shard(&self) -> Arc<Shard> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            local.retain(|(owner, _)| owner.strong_count() > 0);
            let mine = Arc::as_ptr(&self.shards);
            if let Some((_, shard)) = local.iter().find(|(owner, _)| owner.as_ptr() == mine) {
                return Arc::clone(shard);
            }
            let shard = Arc::new(Shard::default());
            self.shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(&shard));
            local.push((Arc::downgrade(&self.shards), Arc::clone(&shard)));
            shard
        })
    }
}

impl Collector for FrameCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.templates.iter().flat_map(Collector::desc).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok([frames, bytes, messages]) = families() else {
            return Vec::new();
        };
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for side in Side::ALL {
            let (d, dir) = (side.index(), direction_label(side));
            for (op, opcode) in OPCODES.iter().enumerate() {
                let total = shards.iter().map(|s| get(&s.frames[d][op])).sum();
                frames
                    .with_label_values(&[dir, frame::opcode_label(*opcode)])
                    .inc_by(total);
            }
            let total = shards.iter().map(|s| get(&s.bytes[d])).sum();
            bytes.with_label_values(&[dir]).inc_by(total);
            let total = shards.iter().map(|s| get(&s.messages[d])).sum();
            messages.with_label_values(&[dir]).inc_by(total);
        }
        drop(shards);
        [frames, bytes, messages]
            .iter()
            .flat_map(Collector::collect)
            .collect()
    }
}
