//! The QUIC side of the framing in [`crate::protocol`]: reading one frame
//! from a stream and writing a queue of messages to one. Both ends use it;
//! it is all the networking a device agent links.

use tokio::sync::mpsc;

use crate::FlError;
use crate::protocol::{Message, decode_body, encode, frame_len};

/// Reads one frame from a stream (the coordinator's and the agent's); `None`
/// at a clean end.
pub async fn next_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, FlError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FlError::TruncatedFrame),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FlError::Read(e)),
    }
    let len = frame_len(len)?;
    metrics::counter!("yilian_fl_bytes_total", "direction" => "received").increment(4 + len as u64);
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FlError::TruncatedFrame,
        quinn::ReadExactError::ReadError(e) => FlError::Read(e),
    })?;
    decode_body(&body).map(Some)
}

/// Spawns a writer draining `rx` into `send` (the agent's side; the
/// coordinator's writer also cuts models into frames as it goes).
pub fn spawn_writer(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Message>) {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let Some(frame) = frame_or_reset(&mut send, &m) else {
                return;
            };
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
}

/// QUIC stream error code for a stream reset because a message could not be
/// framed (a bug: messages are cut to fit before they are queued).
pub const UNENCODABLE: u32 = 0x45;

/// Frames `m`; if it cannot be framed, resets the stream rather than skip
/// the message, which would leave the peer waiting for it forever.
pub(crate) fn frame_or_reset(send: &mut quinn::SendStream, m: &Message) -> Option<Vec<u8>> {
    match encode(m) {
        Ok(frame) => {
            metrics::counter!("yilian_fl_bytes_total", "direction" => "sent")
                .increment(frame.len() as u64);
            Some(frame)
        }
        Err(e) => {
            tracing::error!(error = %e, "resetting a stream: a message could not be framed");
            let _ = send.reset(UNENCODABLE.into());
            None
        }
    }
}
