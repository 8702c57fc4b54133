//! Real container engines for tests: a private `dockerd` or a private Podman service, each
//! in its own temporary directory with its own socket, storage and state, so tests run in
//! parallel without seeing each other's containers or the machine's engine.
//!
//! `Dockerd::start()` runs `dockerd` without bridge and iptables (containers use the host
//! network or none); `Podman::start()` runs `podman system service` rootful with `runc`
//! and explicit ulimits (what works on hosts with a hybrid cgroup layout). Both need root.
//! Dropping the engine removes its containers, stops it by pid, stops what it left running
//! (found by the test directory in their command line), and unmounts what it left mounted.
//!
//! No registry is reachable from tests: `TestEngine::import_busybox` builds an image from
//! scratch around the static busybox of Debian's `busybox-static`, and `save_image` writes
//! an image archive (`docker save`) for image-artifact tests.
//!
//! The engine API is spoken here with plain HTTP/1.0 on a blocking socket: it is all tests
//! need, and it keeps this crate free of the agent's own client under test.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Proc;

/// What to install when an engine is missing.
pub const INSTALL_HINT: &str = "apt-get install docker.io podman busybox-static runc";

/// The API version both engines accept.
const API: &str = "/v1.41";

/// Which engine a `TestEngine` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

/// A private container engine, stopped (with everything it ran) when dropped.
#[derive(Debug)]
pub struct TestEngine {
    pub kind: EngineKind,
    socket: PathBuf,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

/// Starts a private `dockerd`.
#[derive(Debug)]
pub struct Dockerd;

/// Starts a private Podman service.
#[derive(Debug)]
pub struct Podman;

impl Dockerd {
    pub fn start() -> TestEngine {
        require_root("dockerd");
        let dockerd = find_program("dockerd");
        find_program("containerd");
        find_program("runc");
        let dir = engine_dir("ef-dockerd-");
        let root = dir.path();
        let socket = root.join("docker.sock");
        std::fs::write(root.join("daemon.json"), "{}").unwrap();
        let path = |name: &str| root.join(name).display().to_string();
        let args: Vec<String> = [
            format!("--host=unix://{}", socket.display()),
            format!("--config-file={}", path("daemon.json")),
            format!("--data-root={}", path("data")),
            // Short: containerd's sockets live under it and unix socket paths are limited.
            format!("--exec-root={}", path("x")),
            format!("--pidfile={}", path("docker.pid")),
            "--bridge=none".to_owned(),
            "--iptables=false".to_owned(),
            "--ip6tables=false".to_owned(),
            "--ip-forward=false".to_owned(),
            "--ip-masq=false".to_owned(),
        ]
        .into();
        let proc = Proc::spawn("dockerd", &dockerd, &args, &root.join("logs"), &[]);
        TestEngine::started(EngineKind::Docker, socket, proc, dir)
    }
}

impl Podman {
    pub fn start() -> TestEngine {
        require_root("podman");
        let podman = find_program("podman");
        find_program("runc");
        find_program("conmon");
        let dir = engine_dir("ef-podman-");
        let root = dir.path();
        let socket = root.join("podman.sock");
        // PID 1 of containers started with Init: Podman's catatonit when installed, else
        // the static tini that Docker ships.
        let init = ["/usr/libexec/podman/catatonit", "/usr/bin/docker-init"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("neither catatonit nor docker-init is installed (apt-get install catatonit, or {INSTALL_HINT})")
            });
        let path = |name: &str| root.join(name).display().to_string();
        let conf = root.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 init_path = \"{init}\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 [network]\n\
                 network_config_dir = \"{net}\"\n",
                tmp = path("tmp"),
                net = path("net"),
            ),
        )
        .unwrap();
        let args: Vec<String> = vec![
            format!("--root={}", path("root")),
            format!("--runroot={}", path("run")),
            format!("--tmpdir={}", path("tmp")),
            "--cgroup-manager=cgroupfs".to_owned(),
            "--events-backend=file".to_owned(),
            "system".to_owned(),
            "service".to_owned(),
            "--time=0".to_owned(),
            format!("unix://{}", socket.display()),
        ];
        let proc = Proc::spawn(
            "podman",
            &podman,
            &args,
            &root.join("logs"),
            &[("CONTAINERS_CONF", conf.display().to_string())],
        );
        TestEngine::started(EngineKind::Podman, socket, proc, dir)
    }
}

fn require_root(engine: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!("the {engine} tests run a private rootful engine and need root");
    }
}

/// The program's path, or a panic saying what to install.
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: {INSTALL_HINT}"))
}

fn engine_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

impl TestEngine {
    fn started(kind: EngineKind, socket: PathBuf, proc: Proc, dir: tempfile::TempDir) -> Self {
        let mut engine = Self {
            kind,
            socket,
            proc: Some(proc),
            dir,
        };
        engine.wait_ready();
        engine
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = try_request(&self.socket, "GET", "/_ping", None) {
                return;
            }
            let proc = self.proc.as_mut().unwrap();
            if let Some(code) = proc.try_exit_code() {
                panic!(
                    "{:?} engine exited ({code:?}) before answering; its log:\n{}",
                    self.kind,
                    proc.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?} engine did not answer on {} within 30 s; its log:\n{}",
                    self.kind,
                    self.socket.display(),
                    proc.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The engine's own log.
    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    /// One API request (`path` without the version prefix); panics if the engine cannot
    /// be reached. Returns the status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> (u16, Vec<u8>) {
        try_request(&self.socket, method, &format!("{API}{path}"), body)
            .unwrap_or_else(|e| panic!("{method} {path} on the {:?} engine: {e}", self.kind))
    }

    /// A request that must succeed, answering JSON (`null` for an empty answer).
    pub fn json(&self, method: &str, path: &str) -> serde_json::Value {
        let (status, body) = self.request(method, path, None);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        if body.iter().all(u8::is_ascii_whitespace) {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", String::from_utf8_lossy(&body)))
    }

    /// `GET /containers/{id}/json`, `None` if there is no such container.
    pub fn inspect_container(&self, id_or_name: &str) -> Option<serde_json::Value> {
        let (status, body) = self.request("GET", &format!("/containers/{id_or_name}/json"), None);
        match status {
            404 => None,
            200 => Some(serde_json::from_slice(&body).unwrap()),
            _ => panic!(
                "inspecting {id_or_name}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Every container, running or not.
    pub fn containers(&self) -> Vec<serde_json::Value> {
        match self.json("GET", "/containers/json?all=1") {
            serde_json::Value::Array(items) => items,
            other => panic!("container list is not a list: {other}"),
        }
    }

    /// Whether the engine has `image`.
    pub fn has_image(&self, image: &str) -> bool {
        let (status, body) = self.request("GET", &format!("/images/{image}/json"), None);
        match status {
            200 => true,
            404 => false,
            _ => panic!(
                "inspecting image {image}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Creates `reference` (`name:tag`) from scratch: the static busybox at /bin/busybox
    /// with a link for each of its commands, plus `files` (path inside the image, content).
    pub fn import_busybox(&self, reference: &str, files: &[(&str, &[u8])]) {
        let archive = busybox_rootfs(files);
        let (repo, tag) = reference
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{reference}: give the test image a tag"));
        let (status, body) = self.request(
            "POST",
            &format!("/images/create?fromSrc=-&repo={repo}&tag={tag}"),
            Some(("application/x-tar", &archive)),
        );
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "importing {reference}: {text}");
        assert!(!text.contains("\"error"), "importing {reference}: {text}");
        let id = image_id_in(&text)
            .unwrap_or_else(|| panic!("importing {reference}: no image id in {text}"));
        // Podman's import ignores the tag; naming the image explicitly works on both.
        let (status, body) = self.request(
            "POST",
            &format!("/images/{id}/tag?repo={repo}&tag={tag}"),
            None,
        );
        assert!(
            status == 201 || status == 200,
            "tagging {reference}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Writes `reference` as an image archive (`docker save`) to `dest`.
    pub fn save_image(&self, reference: &str, dest: &Path) {
        let (status, body) = self.request("GET", &format!("/images/{reference}/get"), None);
        assert_eq!(
            status,
            200,
            "saving {reference}: {}",
            String::from_utf8_lossy(&body)
        );
        std::fs::write(dest, body).unwrap();
    }

    /// Removes `reference` (forcing: also when containers use it).
    pub fn remove_image(&self, reference: &str) {
        let (status, body) = self.request("DELETE", &format!("/images/{reference}?force=1"), None);
        assert!(
            status == 200 || status == 404,
            "removing image {reference}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Stops the engine now (as an engine crash or upgrade would), with everything it ran.
    pub fn stop(&mut self) {
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        // Containers first, quickly: an engine stopping them itself waits out their grace
        // periods, and Podman leaves them running.
        if let Ok((200, body)) = try_request(
            &self.socket,
            "GET",
            &format!("{API}/containers/json?all=1"),
            None,
        ) {
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            for container in list.as_array().into_iter().flatten() {
                if let Some(id) = container["Id"].as_str() {
                    let _ = try_request(
                        &self.socket,
                        "DELETE",
                        &format!("{API}/containers/{id}?force=1&v=1"),
                        None,
                    );
                }
            }
        }
        proc.stop();
        kill_leftovers(self.dir.path());
        unmount_under(self.dir.path());
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills what the engine left running (Podman's conmon processes outlive the service):
/// every process whose command line names the engine's directory, by pid.
fn kill_leftovers(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Unmounts everything mounted under `dir` (overlay and namespace mounts an engine left),
/// deepest first, so the directory can be removed.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `sha256:<64 hex>` somewhere in an engine's answer.
fn image_id_in(text: &str) -> Option<String> {
    let start = text.find("sha256:")?;
    let hex: String = text[start + 7..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// An HTTP/1.0 request on the engine's socket: the answer ends when the engine closes.
fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\n");
    let payload = match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
            bytes
        }
        None => &[],
    };
    head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(payload)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status"))?;
    let mut body = answer.split_off(end + 4);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// A tar of the image's root file system: /bin/busybox, a link per busybox command,
/// /tmp, /etc, and `files`.
fn busybox_rootfs(files: &[(&str, &[u8])]) -> Vec<u8> {
    let busybox_path = Path::new("/bin/busybox");
    let busybox = std::fs::read(busybox_path)
        .unwrap_or_else(|e| panic!("reading /bin/busybox ({e}): {INSTALL_HINT}"));
    assert!(
        is_static_elf(&busybox),
        "/bin/busybox is not statically linked, so it cannot run in an image without a libc: apt-get install busybox-static"
    );
    let list = std::process::Command::new(busybox_path)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("running busybox --list: {e}"));
    let mut tar = Tar::default();
    tar.directory("bin/", 0o755);
    tar.directory("etc/", 0o755);
    tar.directory("tmp/", 0o1777);
    tar.file("bin/busybox", 0o755, &busybox);
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            tar.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    for (path, content) in files {
        tar.file(path.trim_start_matches('/'), 0o644, content);
    }
    tar.finish()
}

/// Whether an ELF executable has no program interpreter (is statically linked).
fn is_static_elf(elf: &[u8]) -> bool {
    let read = |offset: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(offset..offset + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    };
    // 64-bit little-endian ELF only (the machines tests run on).
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let entry = (phoff + i * phentsize) as usize;
        // PT_INTERP = 3
        read(entry, 4) != Some(3)
    })
}

/// A minimal ustar writer (directories, files and symbolic links) for test images.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8, link: &str) {
        assert!(
            name.len() < 100 && link.len() < 100,
            "tar name too long: {name}"
        );
        let mut header = [0u8; 512];
        let put = |header: &mut [u8; 512], offset: usize, value: &[u8]| {
            header[offset..offset + value.len()].copy_from_slice(value);
        };
        put(&mut header, 0, name.as_bytes());
        put(&mut header, 100, format!("{mode:07o}\0").as_bytes());
        put(&mut header, 108, b"0000000\0");
        put(&mut header, 116, b"0000000\0");
        put(&mut header, 124, format!("{size:011o}\0").as_bytes());
        put(&mut header, 136, b"00000000000\0");
        put(&mut header, 148, b"        ");
        header[156] = kind;
        put(&mut header, 157, link.as_bytes());
        put(&mut header, 257, b"ustar\0");
        put(&mut header, 263, b"00");
        let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        put(&mut header, 148, format!("{checksum:06o}\0 ").as_bytes());
        self.out.extend_from_slice(&header);
    }

    fn directory(&mut self, name: &str, mode: u32) {
        self.header(name, mode, 0, b'5', "");
    }

    fn file(&mut self, name: &str, mode: u32, content: &[u8]) {
        self.header(name, mode, content.len(), b'0', "");
        self.out.extend_from_slice(content);
        let padding = (512 - content.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, padding));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o777, 0, b'2', target);
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0, 1024));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    #[test]
    fn image_ids_are_found_in_answers() {
        let id = "a".repeat(64);
        assert_eq!(
            image_id_in(&format!("{{\"status\":\"sha256:{id}\"}}")),
            Some(format!("sha256:{id}"))
        );
        assert_eq!(image_id_in("{\"status\":\"sha256:abc\"}"), None);
    }
}
