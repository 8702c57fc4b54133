//! The limits a module runs under: its memory budget, its CPU share, and the epoch ticker
//! that lets the agent interrupt and throttle modules.
//!
//! Fuel needs nothing here: the engine counts it down and traps when it runs out.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgefleet_wire::workload::{ByteSize, Cpus};
use nix::time::{ClockId, clock_gettime};
use tracing::warn;
use wasmtime::{Engine, ResourceLimiter};

/// How often running modules are interrupted to check whether they must stop or pause.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// The longest pause a throttled module is given at once, so that a burst measured late
/// (the machine was busy) does not freeze it for long.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Bytes the engine uses per table element (a pointer).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// `resources.memory`: one budget for all of an instance's linear memories and tables.
///
/// A growth past the budget is refused (`memory.grow` returns -1, as when a machine is out
/// of memory) rather than trapped, so a module that handles allocation failure can; the
/// refusal is remembered so that a module that then gives up is reported as having
/// exceeded its limit.
#[derive(Debug, Default)]
pub(super) struct MemoryBudget {
    limit: Option<u64>,
    used: u64,
    /// The growth last allowed, taken back if the engine then fails to grow.
    pending: u64,
    exceeded: bool,
}

impl MemoryBudget {
    pub(super) fn new(limit: Option<ByteSize>) -> Self {
        Self {
            limit: limit.map(|size| size.0),
            ..Self::default()
        }
    }

    /// The limit, when a growth was refused because of it.
    pub(super) fn exceeded(&self) -> Option<ByteSize> {
        self.limit.filter(|_| self.exceeded).map(ByteSize)
    }

    fn grow(&mut self, bytes: usize) -> bool {
        self.pending = 0;
        let Some(limit) = self.limit else {
            return true;
        };
        let total = u64::try_from(bytes)
            .ok()
            .and_then(|bytes| self.used.checked_add(bytes))
            .filter(|&total| total <= limit);
        match total {
            Some(total) => {
                self.pending = total - self.used;
                self.used = total;
                true
            }
            None => {
                self.exceeded = true;
                false
            }
        }
    }

    fn take_back(&mut self) {
        self.used = self.used.saturating_sub(self.pending);
        self.pending = 0;
    }
}

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        Ok(self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.take_back();
        Ok(())
    }
}

/// `resources.cpus` below one core: after each stretch of running, the module pauses long
/// enough that the CPU time it used is its share of the time that passed. Measured with
/// the module thread's own CPU clock, so time spent waiting in WASI calls counts as idle.
/// A module is single-threaded: a share of one core or more needs no throttling.
#[derive(Debug)]
pub(super) struct Throttle {
    share: f64,
    last_cpu: Duration,
    last_check: Instant,
}

impl Throttle {
    /// A throttle for the calling thread, which must be the one that runs the module.
    pub(super) fn for_this_thread(cpus: Option<Cpus>) -> Option<Self> {
        let cpus = cpus.filter(|cpus| cpus.0 < 1000)?;
        let Some(last_cpu) = thread_cpu_time() else {
            warn!("cannot read the thread CPU clock; the module's CPU share is not enforced");
            return None;
        };
        Some(Self {
            share: cpus.as_f64(),
            last_cpu,
            last_check: Instant::now(),
        })
    }

    /// How long the module must pause now to keep to its share, if at all.
    pub(super) fn pause(&mut self) -> Option<Duration> {
        let cpu = thread_cpu_time()?;
        let now = Instant::now();
        let used = cpu.saturating_sub(self.last_cpu);
        let passed = now.duration_since(self.last_check);
        let pause = used
            .div_f64(self.share)
            .saturating_sub(passed)
            .min(MAX_PAUSE);
        self.last_cpu = cpu;
        self.last_check = now + pause;
        (!pause.is_zero()).then_some(pause)
    }
}

fn thread_cpu_time() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// Advances the engine's epoch every `TICK` while modules run, so that each checks at
/// least that often whether it must stop or pause. The thread starts with the first
/// module and sleeps (without ticking) while none runs.
pub(super) struct Ticker {
    engine: Option<Engine>,
    state: Mutex<TickerState>,
    wake: Condvar,
}

#[derive(Default)]
struct TickerState {
    running: usize,
    thread_started: bool,
    shut_down: bool,
}

/// Counts a module as running while it lives.
pub(super) struct Running(Arc<Ticker>);

impl Ticker {
    pub(super) fn new(engine: Option<Engine>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            state: Mutex::new(TickerState::default()),
            wake: Condvar::new(),
        })
    }

    pub(super) fn running(self: &Arc<Self>) -> Running {
        let mut state = self.lock();
        state.running += 1;
        if !state.thread_started {
            state.thread_started = self.spawn_thread();
        }
        self.wake.notify_all();
        Running(self.clone())
    }

    /// Ends the thread once no module runs any more.
    pub(super) fn shut_down(&self) {
        self.lock().shut_down = true;
        self.wake.notify_all();
    }

    fn spawn_thread(self: &Arc<Self>) -> bool {
        let Some(engine) = self.engine.clone() else {
            return false;
        };
        let ticker = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .stack_size(64 << 10)
            .spawn(move || ticker.tick(&engine));
        match spawned {
            Ok(_) => true,
            Err(error) => {
                // Modules still run and still honour fuel and memory limits; only
                // stopping a module in an endless loop and the CPU share need the ticks.
                warn!(%error, "cannot start the WebAssembly epoch thread; will retry with the next module");
                false
            }
        }
    }

    fn tick(&self, engine: &Engine) {
        loop {
            {
                let mut state = self.lock();
                while state.running == 0 {
                    if state.shut_down {
                        state.thread_started = false;
                        return;
                    }
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TickerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.running = state.running.saturating_sub(1);
        self.0.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_covers_memories_and_tables_together() {
        let mut budget = MemoryBudget::new(Some(ByteSize(1 << 20)));
        assert!(budget.memory_growing(0, 512 << 10, None).unwrap());
        // 64 Ki elements of 8 bytes: 512 KiB, exactly what is left.
        assert!(budget.table_growing(0, 64 << 10, None).unwrap());
        assert_eq!(budget.exceeded(), None);
        assert!(!budget.memory_growing(512 << 10, 576 << 10, None).unwrap());
        assert_eq!(budget.exceeded(), Some(ByteSize(1 << 20)));
    }

    #[test]
    fn a_failed_growth_is_taken_back() {
        let mut budget = MemoryBudget::new(Some(ByteSize(128 << 10)));
        assert!(budget.memory_growing(0, 128 << 10, None).unwrap());
        budget
            .memory_grow_failed(wasmtime::Error::msg("out of memory"))
            .unwrap();
        assert!(budget.memory_growing(0, 128 << 10, None).unwrap());
        assert_eq!(budget.exceeded(), None);
    }

    #[test]
    fn no_limit_allows_anything() {
        let mut budget = MemoryBudget::new(None);
        assert!(budget.memory_growing(0, usize::MAX, None).unwrap());
        assert_eq!(budget.exceeded(), None);
    }

    #[test]
    fn a_throttled_thread_pauses_in_proportion_to_the_cpu_it_used() {
        assert!(Throttle::for_this_thread(Some(Cpus(1000))).is_none());
        let mut throttle = Throttle::for_this_thread(Some(Cpus(250))).unwrap();
        // Burn some CPU: with a quarter of a core, the pause is about three times the
        // CPU used (minus the time that passed meanwhile), and never over MAX_PAUSE.
        let began = Instant::now();
        let mut x = 0u64;
        while began.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let pause = throttle.pause().expect("a pause after busy work");
        assert!(pause > Duration::ZERO && pause <= MAX_PAUSE, "{pause:?}");
        // A module that paused as told owes (next to) nothing at the next check.
        std::thread::sleep(pause);
        let owed = throttle.pause().unwrap_or_default();
        assert!(owed < Duration::from_millis(5), "{owed:?}");
    }
}
