//! A module's stdout and stderr, written straight into the workload's logs.
//!
//! Writes go to the log synchronously on the module's thread: no pipe, no task, nothing
//! buffered that a trap could lose. Lines are cut and stamped by the log itself; a partial
//! last line is flushed when the module ends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use edgefleet_wire::session::LogStream;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::runtime::logs::WorkloadLogs;

/// How much a module may hand over in one write.
const WRITE_BUDGET: usize = 64 * 1024;

#[derive(Clone)]
pub(super) struct LogOutput {
    logs: WorkloadLogs,
    stream: LogStream,
}

impl LogOutput {
    pub(super) fn new(logs: WorkloadLogs, stream: LogStream) -> Self {
        Self { logs, stream }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    /// Always ready: the log never blocks its writer (it drops output it cannot store).
    async fn ready(&mut self) {}
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.logs.write(self.stream, &bytes);
        Ok(())
    }

    /// Nothing is buffered here; a partial line waits in the log for its end, as it
    /// would in a pipe.
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.logs.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
