//! Sequential reading of the frames of one segment file between two offsets, for the
//! uploader's reads (checksums verified) and for moving a stream's cursor (headers only).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::frame::{self, Decoded, HEADER_BYTES, Header};

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The bytes at `offset` are not the frame the segment's index promised.
    Corrupt {
        offset: u64,
        reason: &'static str,
    },
}

impl From<io::Error> for ReadError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// Reads frames from `offset` up to `end` (both on frame boundaries).
pub struct FrameReader {
    reader: BufReader<File>,
    offset: u64,
    end: u64,
}

impl FrameReader {
    pub fn open(path: &Path, offset: u64, end: u64) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, file),
            offset,
            end,
        })
    }

    /// The offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame's header, skipping its payload.
    pub fn next_header(&mut self) -> Result<Option<Header>, ReadError> {
        let Some(header) = self.read_header()? else {
            return Ok(None);
        };
        let payload = i64::from(header.payload_len);
        self.reader.seek_relative(payload)?;
        self.offset += header.frame_bytes();
        Ok(Some(header))
    }

    /// The next frame, with its checksum verified.
    pub fn next_frame(&mut self) -> Result<Option<(Header, Vec<u8>)>, ReadError> {
        let start = self.offset;
        let mut fixed = [0u8; HEADER_BYTES];
        let Some(header) = self.read_header_into(&mut fixed)? else {
            return Ok(None);
        };
        let mut frame = Vec::with_capacity(header.frame_bytes() as usize);
        frame.extend_from_slice(&fixed);
        frame.resize(header.frame_bytes() as usize, 0);
        self.reader.read_exact(&mut frame[HEADER_BYTES..])?;
        self.offset += header.frame_bytes();
        match frame::decode(&frame) {
            Decoded::Frame { .. } => {
                frame.drain(..HEADER_BYTES);
                Ok(Some((header, frame)))
            }
            Decoded::Incomplete => Err(ReadError::Corrupt {
                offset: start,
                reason: "incomplete frame",
            }),
            Decoded::Invalid(reason) => Err(ReadError::Corrupt {
                offset: start,
                reason,
            }),
        }
    }

    fn read_header(&mut self) -> Result<Option<Header>, ReadError> {
        let mut fixed = [0u8; HEADER_BYTES];
        self.read_header_into(&mut fixed)
    }

    fn read_header_into(
        &mut self,
        fixed: &mut [u8; HEADER_BYTES],
    ) -> Result<Option<Header>, ReadError> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let corrupt = |reason| ReadError::Corrupt {
            offset: self.offset,
            reason,
        };
        if self.end - self.offset < HEADER_BYTES as u64 {
            return Err(corrupt("the segment ends inside a frame header"));
        }
        self.reader.read_exact(fixed)?;
        let header =
            frame::parse_header(fixed).ok_or_else(|| corrupt("impossible frame header"))?;
        if self.offset + header.frame_bytes() > self.end {
            return Err(corrupt("a frame runs past the end of the segment"));
        }
        Ok(Some(header))
    }
}
