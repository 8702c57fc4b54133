//! The WebAssembly runtime against the real embedded wasmtime, with modules built here from
//! WAT that use WASI preview 1 directly.
#![cfg(feature = "wasm")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgefleet_agent::runtime::logs::LogRegistry;
use edgefleet_agent::runtime::wasm::{WasmConfig, WasmRuntime};
use edgefleet_agent::runtime::{ArtifactSource, Launch, Runtime};
use edgefleet_core::supervisor::Event;
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::session::LogStream;
use edgefleet_wire::workload::{ArtifactRef, ByteSize, Cpus, VolumeMount};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// How long any single step may take before the test fails.
const LIMIT: Duration = Duration::from_secs(20);

/// Serves artifacts from a directory by name, checking the digest like the node's
/// artifact cache does, and counts fetches.
struct DirArtifacts {
    dir: PathBuf,
    fetches: AtomicUsize,
}

impl ArtifactSource for DirArtifacts {
    fn fetch<'a>(
        &'a self,
        artifact: &'a ArtifactRef,
        progress: &'a (dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> BoxFuture<'a, Result<PathBuf, String>> {
        Box::pin(async move {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let path = self.dir.join(&artifact.name);
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|error| format!("reading {}: {error}", path.display()))?;
            let size = bytes.len() as u64;
            progress(size, Some(size));
            let digest = hex::encode(Sha256::digest(&bytes));
            if digest != artifact.digest {
                return Err(format!("{artifact}: content has digest {digest}"));
            }
            Ok(path)
        })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    runtime: WasmRuntime,
    events: mpsc::UnboundedReceiver<Event>,
    logs: LogRegistry,
    artifacts: Arc<DirArtifacts>,
    progress: Vec<String>,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let artifacts_dir = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts_dir).unwrap();
    let artifacts = Arc::new(DirArtifacts {
        dir: artifacts_dir,
        fetches: AtomicUsize::new(0),
    });
    let logs = LogRegistry::new(dir.path().join("logs"), 1 << 20, 2);
    let (tx, events) = mpsc::unbounded_channel();
    let runtime = WasmRuntime::new(
        WasmConfig {
            logs: logs.clone(),
            artifacts: artifacts.clone(),
        },
        tx,
    );
    Harness {
        dir,
        runtime,
        events,
        logs,
        artifacts,
        progress: Vec::new(),
    }
}

/// A WASI command: the imports and helpers every test module may use, then `body`.
///
/// Memory layout: 0..64 scratch (iovecs, results), 64..192 poll_oneoff, 1024.. argv and
/// environ pointers, 4096.. string buffers, 16384.. file contents, 32768.. constant data.
fn command(body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  ;; Prints a buffer of NUL-terminated strings (argv, environ) one per line.
  (func $print_list (param $buf i32) (param $size i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $size)))
        (if (i32.eqz (i32.load8_u (i32.add (local.get $buf) (local.get $i))))
          (then (i32.store8 (i32.add (local.get $buf) (local.get $i)) (i32.const 10))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $print (i32.const 1) (local.get $buf) (local.get $size)))
  ;; Sleeps `nanos` on the monotonic clock.
  (func $sleep (param $nanos i64)
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (local.get $nanos))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 160))))
  {body})"#
    );
    wat::parse_str(&wat).unwrap()
}

fn launch(spec: WorkloadSpec) -> Launch {
    Launch {
        spec,
        files_dir: None,
        spec_hash: "hash".into(),
        key: "key".into(),
        deployment: "tests".into(),
        revision: "r1".into(),
        local_api: None,
    }
}

impl Harness {
    /// Stores `bytes` as an artifact named `file` and returns a `wasm` workload running it.
    fn workload(&self, name: &str, file: &str, bytes: &[u8]) -> WorkloadSpec {
        std::fs::write(self.artifacts.dir.join(file), bytes).unwrap();
        let module = ArtifactRef {
            name: file.to_owned(),
            digest: hex::encode(Sha256::digest(bytes)),
        };
        WorkloadSpec::wasm(name, module)
    }

    /// The next event that is not a progress report.
    async fn next(&mut self) -> Event {
        loop {
            let event = tokio::time::timeout(LIMIT, self.events.recv())
                .await
                .expect("no event in time")
                .expect("event channel closed");
            match event {
                Event::Progress { message, .. } => self.progress.push(message),
                event => return event,
            }
        }
    }

    async fn prepare(&mut self, name: &str, instance: u64, launch: &Launch) -> Result<(), String> {
        self.runtime.prepare(name, instance, launch);
        match self.next().await {
            Event::Prepared {
                name: n,
                instance: i,
            } if n == name && i == instance => Ok(()),
            Event::PrepareFailed {
                name: n,
                instance: i,
                error,
            } if n == name && i == instance => Err(error),
            other => panic!("expected the preparation of {name} #{instance}, got {other:?}"),
        }
    }

    async fn start(&mut self, name: &str, instance: u64, launch: &Launch) -> Result<(), String> {
        self.runtime.start(name, instance, launch);
        match self.next().await {
            Event::Started {
                name: n,
                instance: i,
                pid,
                ..
            } if n == name && i == instance => {
                assert_eq!(pid, None, "a module has no process of its own");
                Ok(())
            }
            Event::StartFailed {
                name: n,
                instance: i,
                error,
            } if n == name && i == instance => Err(error),
            other => panic!("expected the start of {name} #{instance}, got {other:?}"),
        }
    }

    async fn exited(&mut self, name: &str, instance: u64) -> (Option<i32>, Option<String>) {
        match self.next().await {
            Event::Exited {
                name: n,
                instance: i,
                code,
                signal,
                reason,
            } if n == name && i == instance => {
                assert_eq!(signal, None);
                (code, reason)
            }
            other => panic!("expected {name} #{instance} to exit, got {other:?}"),
        }
    }

    /// Prepares, starts and waits for the end of one instance.
    async fn run(
        &mut self,
        name: &str,
        instance: u64,
        launch: &Launch,
    ) -> (Option<i32>, Option<String>) {
        self.prepare(name, instance, launch).await.unwrap();
        self.start(name, instance, launch).await.unwrap();
        self.exited(name, instance).await
    }

    fn lines(&self, workload: &str, stream: LogStream) -> Vec<String> {
        self.logs
            .workload(workload)
            .read(None, None)
            .unwrap()
            .into_iter()
            .filter(|line| line.stream == stream)
            .map(|line| line.line)
            .collect()
    }
}

const HELLO: &str = r#"
  (data (i32.const 32768) "hello stdout\n")
  (data (i32.const 32800) "partial stderr")
  (func (export "_start")
    (call $print (i32.const 1) (i32.const 32768) (i32.const 13))
    (call $print (i32.const 2) (i32.const 32800) (i32.const 14)))"#;

#[tokio::test]
async fn hello_world_reaches_the_workload_logs() {
    let mut h = harness();
    let launch = launch(h.workload("hello", "hello.wasm", &command(HELLO)));
    assert_eq!(h.run("hello", 1, &launch).await, (Some(0), None));
    assert_eq!(h.lines("hello", LogStream::Stdout), ["hello stdout"]);
    // A last line without its newline is flushed when the module ends.
    assert_eq!(h.lines("hello", LogStream::Stderr), ["partial stderr"]);
    assert!(
        h.progress
            .iter()
            .any(|p| p.starts_with("downloading module hello.wasm")),
        "{:?}",
        h.progress
    );
}

#[tokio::test]
async fn args_and_env_are_visible() {
    let mut h = harness();
    let module = command(
        r#"
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (call $print_list (i32.const 4096) (i32.load (i32.const 20)))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 1024) (i32.const 8192)))
    (call $print_list (i32.const 8192) (i32.load (i32.const 20))))"#,
    );
    let mut spec = h.workload("args-env", "args.wasm", &module);
    spec.args = vec!["one".into(), "two words".into()];
    spec.env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two".into())]);
    let files = h.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut launch = launch(spec);
    launch.files_dir = Some(files);
    assert_eq!(h.run("args-env", 1, &launch).await, (Some(0), None));
    assert_eq!(
        h.lines("args-env", LogStream::Stdout),
        [
            "args-env",
            "one",
            "two words",
            "A=1",
            "B=two",
            "EDGEFLEET_FILES_DIR=/run/edgefleet/files"
        ]
    );
}

/// File helpers: `$cat` prints a file, `$create` writes one.
const FILE_FUNCS: &str = r#"
  (data (i32.const 32768) "input.txt")
  (data (i32.const 32800) "config.txt")
  (data (i32.const 32832) "output.txt")
  (data (i32.const 32864) "written\n")
  ;; Prints the file at `path` under directory `dir`; returns a WASI errno.
  (func $cat (param $dir i32) (param $path i32) (param $len i32) (result i32)
    (local $errno i32)
    ;; rights: fd_read (1 << 1)
    (local.set $errno (call $path_open (local.get $dir) (i32.const 0) (local.get $path) (local.get $len)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 24)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (i32.store (i32.const 0) (i32.const 16384))
    (i32.store (i32.const 4) (i32.const 4096))
    (local.set $errno (call $fd_read (i32.load (i32.const 24)) (i32.const 0) (i32.const 1) (i32.const 28)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (call $print (i32.const 1) (i32.const 16384) (i32.load (i32.const 28)))
    (i32.const 0))
  ;; Creates (or truncates) `path` under `dir` and writes into it; returns a WASI errno.
  (func $create (param $dir i32) (param $path i32) (param $len i32) (result i32)
    (local $errno i32)
    ;; oflags: creat | trunc; rights: fd_write (1 << 6)
    (local.set $errno (call $path_open (local.get $dir) (i32.const 0) (local.get $path) (local.get $len)
      (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 24)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (i32.store (i32.const 0) (i32.const 32864))
    (i32.store (i32.const 4) (i32.const 8))
    (call $fd_write (i32.load (i32.const 24)) (i32.const 0) (i32.const 1) (i32.const 28)))
"#;

#[tokio::test]
async fn volumes_and_files_are_preopened() {
    let mut h = harness();
    let data = h.dir.path().join("data");
    let files = h.dir.path().join("files");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(data.join("input.txt"), "from the volume\n").unwrap();
    std::fs::write(files.join("config.txt"), "from the files\n").unwrap();
    // Prints `/data/input.txt` (fd 3, the volume) and `config.txt` of the rendered files
    // (fd 4), then creates `/data/output.txt`. Exit codes 10, 11, 12: that step failed.
    let module = command(&format!(
        r#"{FILE_FUNCS}
  (func (export "_start")
    (if (call $cat (i32.const 3) (i32.const 32768) (i32.const 9)) (then (call $proc_exit (i32.const 10))))
    (if (call $cat (i32.const 4) (i32.const 32800) (i32.const 10)) (then (call $proc_exit (i32.const 11))))
    (if (call $create (i32.const 3) (i32.const 32832) (i32.const 10)) (then (call $proc_exit (i32.const 12)))))"#
    ));
    let mut instance = 0;
    for read_only in [true, false] {
        instance += 1;
        let mut spec = h.workload("files", "files.wasm", &module);
        spec.volumes = vec![VolumeMount {
            source: data.to_str().unwrap().to_owned(),
            target: "/data".into(),
            read_only,
        }];
        let mut launch = launch(spec);
        launch.files_dir = Some(files.clone());
        let (code, _) = h.run("files", instance, &launch).await;
        let written = std::fs::read_to_string(data.join("output.txt")).ok();
        if read_only {
            assert_eq!(
                code,
                Some(12),
                "creating a file in a read-only volume must fail"
            );
            assert_eq!(written, None);
        } else {
            assert_eq!(code, Some(0));
            assert_eq!(written.as_deref(), Some("written\n"));
        }
    }
    assert_eq!(
        h.lines("files", LogStream::Stdout),
        [
            "from the volume",
            "from the files",
            "from the volume",
            "from the files"
        ]
    );
    // The rendered files are never writable: without volumes they are fd 3.
    let writer = command(&format!(
        r#"{FILE_FUNCS}
  (func (export "_start")
    (if (call $cat (i32.const 3) (i32.const 32800) (i32.const 10)) (then (call $proc_exit (i32.const 11))))
    (if (call $create (i32.const 3) (i32.const 32832) (i32.const 10)) (then (call $proc_exit (i32.const 12)))))"#
    ));
    let mut launch1 = launch(h.workload("writer", "writer.wasm", &writer));
    launch1.files_dir = Some(files.clone());
    assert_eq!(h.run("writer", 1, &launch1).await.0, Some(12));
    assert_eq!(h.lines("writer", LogStream::Stdout), ["from the files"]);
    assert!(!files.join("output.txt").exists());
    // A volume whose directory is missing fails the start, naming it.
    let mut spec = h.workload("files", "files.wasm", &module);
    spec.volumes = vec![VolumeMount {
        source: "/nonexistent/edgefleet-test".into(),
        target: "/data".into(),
        read_only: true,
    }];
    let launch = launch(spec);
    h.prepare("files", 4, &launch).await.unwrap();
    let error = h.start("files", 4, &launch).await.unwrap_err();
    assert!(
        error.contains("volumes[0]") && error.contains("/nonexistent/edgefleet-test"),
        "{error}"
    );
}

#[tokio::test]
async fn exit_codes_and_traps() {
    let mut h = harness();
    let cases: [(&str, &str, Option<i32>, Option<&str>); 5] = [
        ("returns", r#"(func (export "_start"))"#, Some(0), None),
        (
            "exits-7",
            r#"(func (export "_start") (call $proc_exit (i32.const 7)))"#,
            Some(7),
            None,
        ),
        (
            "traps",
            r#"(func (export "_start") unreachable)"#,
            None,
            Some("trapped: wasm `unreachable` instruction executed"),
        ),
        (
            "divides",
            r#"(func (export "_start") (drop (i32.div_u (i32.const 1) (i32.const 0))))"#,
            None,
            Some("trapped: integer divide by zero"),
        ),
        (
            "recurses",
            r#"(func $down (call $down)) (func (export "_start") (call $down))"#,
            None,
            Some("trapped: call stack exhausted"),
        ),
    ];
    for (name, body, code, reason) in cases {
        let launch = launch(h.workload(name, &format!("{name}.wasm"), &command(body)));
        let (got_code, got_reason) = h.run(name, 1, &launch).await;
        assert_eq!(
            (got_code, got_reason.as_deref()),
            (code, reason),
            "workload {name}"
        );
    }
}

#[tokio::test]
async fn instantiation_failures_are_start_failures() {
    let mut h = harness();
    let missing_import = wat::parse_str(
        r#"(module
             (import "env" "missing" (func))
             (func (export "_start")))"#,
    )
    .unwrap();
    let launch1 = launch(h.workload("imports", "imports.wasm", &missing_import));
    h.prepare("imports", 1, &launch1).await.unwrap();
    let error = h.start("imports", 1, &launch1).await.unwrap_err();
    assert!(error.contains("env::missing"), "{error}");

    let no_start = wat::parse_str(r#"(module (func (export "main")))"#).unwrap();
    let launch2 = launch(h.workload("reactor", "reactor.wasm", &no_start));
    h.prepare("reactor", 1, &launch2).await.unwrap();
    let error = h.start("reactor", 1, &launch2).await.unwrap_err();
    assert!(
        error.contains("_start") && error.contains("WASI command"),
        "{error}"
    );
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_its_fuel() {
    let mut h = harness();
    let mut spec = h.workload(
        "spinner",
        "spin.wasm",
        &command(r#"(func (export "_start") (loop $l (br $l)))"#),
    );
    spec.resources.fuel = Some(20_000_000);
    let launch = launch(spec);
    assert_eq!(
        h.run("spinner", 1, &launch).await,
        (
            None,
            Some("used up its CPU budget (fuel 20000000)".to_owned())
        )
    );
}

#[tokio::test]
async fn growing_memory_past_its_limit_fails_cleanly() {
    let mut h = harness();
    // Grows one page (64 KiB) at a time and gives up, like an allocator, when refused.
    let grower = command(
        r#"(func (export "_start")
             (loop $grow
               (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
               (br $grow)))"#,
    );
    let mut spec = h.workload("grower", "grow.wasm", &grower);
    spec.resources.memory = Some(ByteSize(1 << 20));
    let launch1 = launch(spec);
    assert_eq!(
        h.run("grower", 1, &launch1).await,
        (None, Some("exceeded its memory limit of 1Mi".to_owned()))
    );
    // A module whose initial memory is over the limit does not start.
    let big = wat::parse_str(r#"(module (memory (export "memory") 32) (func (export "_start")))"#)
        .unwrap();
    let mut spec = h.workload("big", "big.wasm", &big);
    spec.resources.memory = Some(ByteSize(1 << 20));
    let launch2 = launch(spec);
    h.prepare("big", 1, &launch2).await.unwrap();
    let error = h.start("big", 1, &launch2).await.unwrap_err();
    assert!(error.contains("memory limit of 1Mi"), "{error}");
    // The agent is unharmed: the next module runs.
    let launch3 = launch(h.workload("hello", "hello.wasm", &command(HELLO)));
    assert_eq!(h.run("hello", 1, &launch3).await, (Some(0), None));
}

#[tokio::test]
async fn stop_and_kill_interrupt_busy_and_sleeping_modules_at_once() {
    let mut h = harness();
    let busy = command(r#"(func (export "_start") (loop $l (br $l)))"#);
    let sleeping = command(r#"(func (export "_start") (call $sleep (i64.const 3600000000000)))"#);
    let mut instance = 0;
    for (kind, module) in [("busy", &busy), ("sleeping", &sleeping)] {
        for kill in [false, true] {
            instance += 1;
            let launch = launch(h.workload("looper", &format!("{kind}.wasm"), module));
            h.prepare("looper", instance, &launch).await.unwrap();
            h.start("looper", instance, &launch).await.unwrap();
            // Let it get going (into its loop or its sleep).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let asked = Instant::now();
            if kill {
                h.runtime.kill("looper", instance);
            } else {
                h.runtime.stop("looper", instance);
            }
            let (code, reason) = h.exited("looper", instance).await;
            let took = asked.elapsed();
            assert_eq!(
                (code, reason.as_deref()),
                (None, Some("stopped by the agent"))
            );
            assert!(
                took < Duration::from_secs(1),
                "{kind} module, kill={kill}: took {took:?}"
            );
            // Stopping what has ended does nothing.
            h.runtime.stop("looper", instance);
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), h.events.recv())
            .await
            .is_err(),
        "no event after the last exit"
    );
}

#[tokio::test]
async fn a_corrupt_module_fails_to_prepare_naming_the_artifact() {
    let mut h = harness();
    let launch = launch(h.workload("corrupt", "corrupt.wasm", b"\0asm this is not a module"));
    let error = h.prepare("corrupt", 1, &launch).await.unwrap_err();
    assert!(
        error.contains("corrupt.wasm@sha256:") && error.contains("not a valid WebAssembly module"),
        "{error}"
    );
    // Starting it anyway fails the same way instead of running anything.
    h.runtime.start("corrupt", 2, &launch);
    match h.next().await {
        Event::StartFailed { error, .. } => {
            assert!(error.contains("not a valid WebAssembly module"), "{error}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    // A workload without a module is refused at once.
    let mut spec = WorkloadSpec::wasm("nomodule", launch.spec.module.clone().unwrap());
    spec.module = None;
    let error = h
        .prepare("nomodule", 1, &self::launch(spec))
        .await
        .unwrap_err();
    assert!(error.contains("no module"), "{error}");
}

#[tokio::test]
async fn a_throttled_module_keeps_to_its_cpu_share() {
    let mut h = harness();
    let mut spec = h.workload(
        "cpu-share",
        "spin.wasm",
        &command(r#"(func (export "_start") (loop $l (br $l)))"#),
    );
    spec.resources.cpus = Some(Cpus(100));
    let launch = launch(spec);
    h.prepare("cpu-share", 1, &launch).await.unwrap();
    h.start("cpu-share", 1, &launch).await.unwrap();
    let thread = module_thread("wasm-cpu-share");
    let (cpu_before, began) = (thread_cpu(&thread), Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (cpu, wall) = (thread_cpu(&thread) - cpu_before, began.elapsed());
    h.runtime.stop("cpu-share", 1);
    h.exited("cpu-share", 1).await;
    // A tenth of a core; unthrottled it would take all it can get. Generous, since the
    // share is measured over short stretches.
    println!("throttled to 0.1 cpus: used {cpu:?} of CPU in {wall:?}");
    assert!(cpu < wall.mul_f64(0.3), "used {cpu:?} of CPU in {wall:?}");
    assert!(cpu > Duration::ZERO);
}

/// The `/proc/self/task/<tid>` directory of the thread named `name`.
fn module_thread(name: &str) -> PathBuf {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .unwrap_or_else(|| panic!("no thread named {name}"))
}

/// The CPU time a thread has used (`schedstat`: nanoseconds on a CPU first).
fn thread_cpu(task: &Path) -> Duration {
    let schedstat = std::fs::read_to_string(task.join("schedstat")).unwrap();
    let nanos: u64 = schedstat
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Duration::from_nanos(nanos)
}

#[tokio::test]
async fn restarts_use_the_compiled_module_and_start_quickly() {
    let mut h = harness();
    let launch = launch(h.workload(
        "quick",
        "quick.wasm",
        &command(r#"(func (export "_start"))"#),
    ));
    let mut latencies = Vec::new();
    for instance in 1..=20 {
        h.prepare("quick", instance, &launch).await.unwrap();
        let asked = Instant::now();
        h.start("quick", instance, &launch).await.unwrap();
        latencies.push(asked.elapsed());
        assert_eq!(h.exited("quick", instance).await, (Some(0), None));
    }
    assert_eq!(
        h.artifacts.fetches.load(Ordering::SeqCst),
        1,
        "fetched and compiled once, then cached"
    );
    latencies.sort();
    println!(
        "start of a cached module (start to Started): median {:?}, min {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[0],
        latencies[latencies.len() - 1]
    );
}

#[tokio::test]
async fn a_start_without_preparation_fetches_the_module_first() {
    let mut h = harness();
    let launch = launch(h.workload("hello", "hello.wasm", &command(HELLO)));
    h.start("hello", 1, &launch).await.unwrap();
    assert_eq!(h.exited("hello", 1).await, (Some(0), None));
    assert_eq!(h.lines("hello", LogStream::Stdout), ["hello stdout"]);
}

#[tokio::test]
async fn idle_modules_cost_little_memory() {
    let mut h = harness();
    // Wakes every 100 ms and sleeps again: idle, but running.
    let idler = command(
        r#"(func (export "_start") (loop $l (call $sleep (i64.const 100000000)) (br $l)))"#,
    );
    let spec = h.workload("idler", "idle.wasm", &idler);
    let first = launch(spec.clone());
    h.prepare("idler", 0, &first).await.unwrap();
    let before = rss_kib();
    let names: Vec<String> = (0..10).map(|n| format!("idler-{n}")).collect();
    for name in &names {
        let mut spec = spec.clone();
        spec.name = name.clone();
        let launch = launch(spec);
        h.prepare(name, 1, &launch).await.unwrap();
        h.start(name, 1, &launch).await.unwrap();
    }
    // Let every module go through a few sleeps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "10 idle modules: RSS {before} KiB before, {after} KiB after, {} KiB per module",
        after.saturating_sub(before) / 10
    );
    for name in &names {
        h.runtime.stop(name, 1);
    }
    let mut stopped = Vec::new();
    for _ in &names {
        match h.next().await {
            Event::Exited { name, reason, .. } => {
                assert_eq!(reason.as_deref(), Some("stopped by the agent"));
                stopped.push(name);
            }
            other => panic!("expected an exit, got {other:?}"),
        }
    }
    stopped.sort();
    assert_eq!(stopped, names);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
