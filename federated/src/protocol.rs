//! The coordinator-agent protocol, defined once: versioned messages
//! (serde + postcard), length-prefixed frames, and model weights streamed in
//! chunks so no frame grows with the model.
//!
//! A frame is a 4-byte big-endian length and that many bytes of a postcard
//! [`Envelope`]. Weights travel as a [`Message::WeightsHeader`] followed by
//! [`Message::WeightsChunk`]s, reassembled by [`ChunkAssembler`], which
//! refuses anything out of order, out of range or larger than announced.
//! ONNX files for evaluation travel the same way as [`Message::ModelChunk`]s
//! of bytes.
//!
//! Version 2 added the evaluation messages at the end of [`Message`], so
//! every version-1 message keeps its encoding. Each frame carries the
//! lowest version that has its message ([`Message::since`]): a version-1
//! peer still understands every version-1 message, and one sent an
//! evaluation message fails with a clear version error rather than a
//! decoding one.

use serde::{Deserialize, Serialize};
use yilian_models::{EvalCounts, ModelSpec, OutputKind, TrainConfig};

use crate::{DataSchema, FlError, RejectReason};

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol version this build still reads.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest frame accepted (a chunk of weights plus headroom).
pub const MAX_FRAME: usize = 1 << 20;
/// Parameters of the largest model secure aggregation can carry: a masked
/// update travels in one frame, four bytes a parameter, beside its task id
/// (at most 128 bytes), round and sender.
pub const MAX_SECURE_PARAMS: usize = (MAX_FRAME - 512) / 4;
/// Weights per chunk: 128 KiB of `f32`.
pub const CHUNK_VALUES: usize = 32 * 1024;
/// ONNX bytes per chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// ALPN for QUIC connections.
pub const ALPN: &[u8] = b"yilian-fl/1";

/// Why weights are being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsPurpose {
    /// Coordinator to agent: the global model to train from.
    Global,
    /// Agent to coordinator: the locally trained model.
    Update,
}

/// Every message either side can send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Agent, first: the data it holds.
    Hello {
        schema: DataSchema,
        samples: u64,
    },
    /// Coordinator: a task the agent may join.
    TaskOffer {
        task_id: String,
        model: ModelSpec,
        schema: DataSchema,
        rounds: u32,
        local_epochs: u32,
        params: u64,
    },
    TaskAccept {
        task_id: String,
    },
    /// Agent: refuses (schema or policy), with the reason for the log.
    TaskDecline {
        task_id: String,
        reason: String,
    },
    /// Coordinator: train for `round` with this configuration; the global weights follow.
    RoundStart {
        task_id: String,
        round: u32,
        config: TrainConfig,
    },
    WeightsHeader {
        purpose: WeightsPurpose,
        round: u32,
        values: u64,
        chunks: u32,
    },
    WeightsChunk {
        round: u32,
        index: u32,
        values: Vec<f32>,
    },
    /// Agent: its update's weights have been sent; this is their metadata.
    UpdateDone {
        round: u32,
        samples: u64,
        loss: f32,
    },
    UpdateRejected {
        round: u32,
        reason: RejectReason,
    },
    /// Coordinator: the round closed; the agent's contribution and reward.
    RoundResult {
        round: u32,
        accuracy: f64,
        contribution: f64,
        reward: u64,
        /// The reward's ledger entry with its inclusion proof, if written.
        proof: Option<RewardProof>,
    },
    TaskDone {
        task_id: String,
    },
    // The engineer's messages of versions 1 to 3, retired: engineers use
    // the gRPC control plane (`proto/federated.proto`). The placeholders
    // keep every later message's encoding.
    #[doc(hidden)]
    RetiredSubmitTask,
    #[doc(hidden)]
    RetiredTaskAccepted,
    #[doc(hidden)]
    RetiredStatusRequest,
    #[doc(hidden)]
    RetiredStatus,
    #[doc(hidden)]
    RetiredDownloadRequest,
    #[doc(hidden)]
    RetiredModel,
    /// Either side: a fatal condition, then the stream closes.
    Refused {
        reason: String,
    },
    // Version 2: federated evaluation. New messages go after this point only.
    /// Coordinator: an evaluation the agent may join; what it would download and run.
    EvaluationOffer {
        task_id: String,
        schema: DataSchema,
        output: OutputKind,
        model_bytes: u64,
        params: u64,
        model_sha256: [u8; 32],
    },
    /// Coordinator: evaluate now; the ONNX model follows in `chunks` [`Message::ModelChunk`]s.
    EvaluationStart {
        task_id: String,
        bytes: u64,
        chunks: u32,
    },
    /// A slice of an ONNX file, coordinator to agent.
    ModelChunk {
        index: u32,
        bytes: Vec<u8>,
    },
    /// Agent: the counts of the model on its data; nothing per example.
    EvaluationReport {
        task_id: String,
        counts: EvalCounts,
    },
    #[doc(hidden)]
    RetiredSubmitEvaluation,
    #[doc(hidden)]
    RetiredEvaluationStatus,
    // Version 3: secure aggregation.
    /// Coordinator: a step of a secure round ([`crate::secagg`]).
    SecAggToAgent {
        task_id: String,
        message: crate::secagg::ToAgent,
    },
    /// Agent: its answer to a step of a secure round.
    SecAggFromAgent {
        task_id: String,
        message: crate::secagg::FromAgent,
    },
}

impl Message {
    /// The protocol version that introduced this message.
    pub fn since(&self) -> u16 {
        match self {
            Message::EvaluationOffer { .. }
            | Message::EvaluationStart { .. }
            | Message::ModelChunk { .. }
            | Message::EvaluationReport { .. }
            | Message::RetiredSubmitEvaluation
            | Message::RetiredEvaluationStatus => 2,
            Message::SecAggToAgent { .. } | Message::SecAggFromAgent { .. } => 3,
            _ => 1,
        }
    }
}

/// A reward transaction as logged, with what an agent needs to check
/// offline that the ledger holds it: its inclusion under a signed tree head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardProof {
    pub index: u64,
    /// The entry's bytes (a postcard `SignedTransaction`).
    pub entry: Vec<u8>,
    pub inclusion: yilian_ledger::InclusionProof,
    pub head: yilian_ledger::SignedTreeHead,
}

impl RewardProof {
    /// Checks the tree head's signature, the entry's inclusion under it, and
    /// that the entry is the reward claimed. Returns the rewarded amount.
    pub fn verify(
        &self,
        task_id: &str,
        round: u32,
        account: &crate::AgentId,
    ) -> Result<u64, FlError> {
        let bad = |why: &str| FlError::BadRewardProof(why.to_owned());
        self.head.verify().map_err(|e| bad(&e.to_string()))?;
        if self.inclusion.index != self.index || self.inclusion.tree_size != self.head.tree_size {
            return Err(bad("proof is for another entry or tree"));
        }
        yilian_ledger::merkle::verify_inclusion(
            &yilian_ledger::merkle::leaf_hash(&self.entry),
            &self.inclusion,
            &self.head.root_hash,
        )
        .map_err(|e| bad(&e.to_string()))?;
        let tx = yilian_ledger::SignedTransaction::decode(&self.entry)
            .map_err(|e| bad(&e.to_string()))?;
        tx.verify_signature().map_err(|e| bad(&e.to_string()))?;
        match tx.tx.payload {
            yilian_ledger::Payload::Reward {
                task_id: t,
                round: r,
                account: a,
                amount,
            } if t == task_id && r == round && a == *account => Ok(amount),
            _ => Err(bad("entry is not this reward")),
        }
    }
}

/// A message with the protocol version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub message: Message,
}

/// Encodes one message as a frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, FlError> {
    // Borrowed: a weights chunk is not copied to be framed.
    #[derive(Serialize)]
    struct EnvelopeRef<'a> {
        version: u16,
        message: &'a Message,
    }
    let body = postcard::to_stdvec(&EnvelopeRef {
        version: message.since(),
        message,
    })?;
    if body.len() > MAX_FRAME {
        return Err(FlError::FrameTooLarge {
            size: body.len(),
            limit: MAX_FRAME,
        });
    }
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    Ok(frame)
}

/// Decodes a frame's body (without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, FlError> {
    // The version comes first: read it alone, so that a newer peer's message
    // fails as a version error, not as a garbled body.
    let (version, _) = postcard::take_from_bytes::<u16>(body)?;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FlError::ProtocolVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let env: Envelope = postcard::from_bytes(body)?;
    if env.message.since() > env.version {
        return Err(FlError::ProtocolVersion {
            found: env.version,
            supported: env.message.since(),
        });
    }
    Ok(env.message)
}

/// The body length a frame's 4-byte big-endian header announces, refused
/// beyond [`MAX_FRAME`] before anything is allocated for it.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FlError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FlError::FrameTooLarge {
            size: len,
            limit: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Sans-IO frame reader: push bytes as they arrive, pop whole messages.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FlError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = frame_len([len[0], len[1], len[2], len[3]])?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let message = decode_body(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        message.map(Some)
    }
}

/// Splits weights into a header and chunks.
pub fn weight_messages(purpose: WeightsPurpose, round: u32, weights: &[f32]) -> Vec<Message> {
    let chunks = weights.len().div_ceil(CHUNK_VALUES);
    let mut out = vec![Message::WeightsHeader {
        purpose,
        round,
        values: weights.len() as u64,
        chunks: chunks as u32,
    }];
    out.extend(
        weights
            .chunks(CHUNK_VALUES)
            .enumerate()
            .map(|(i, c)| Message::WeightsChunk {
                round,
                index: i as u32,
                values: c.to_vec(),
            }),
    );
    out
}

/// The ONNX file as a run of [`Message::ModelChunk`]s.
pub fn model_chunks(bytes: &[u8]) -> impl Iterator<Item = Message> + '_ {
    bytes
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| Message::ModelChunk {
            index: i as u32,
            bytes: c.to_vec(),
        })
}

/// How many chunks an ONNX file of `bytes` bytes travels in.
pub fn model_chunk_count(bytes: usize) -> u32 {
    bytes.div_ceil(CHUNK_BYTES) as u32
}

/// Reassembles chunked weights (or ONNX bytes), refusing anything that does
/// not fit the header.
#[derive(Debug)]
pub struct ChunkAssembler<T = f32> {
    round: u32,
    expected: usize,
    chunks: u32,
    next: u32,
    per_chunk: usize,
    values: Vec<T>,
}

impl ChunkAssembler<f32> {
    /// From a `WeightsHeader`; `max_values` is what the receiver will accept.
    pub fn new(round: u32, values: u64, chunks: u32, max_values: usize) -> Result<Self, FlError> {
        Self::with_chunk_len(round, values, chunks, max_values, CHUNK_VALUES)
    }
}

impl ChunkAssembler<u8> {
    /// For an ONNX file announced as `bytes` long in `chunks` chunks;
    /// `max_bytes` is what the receiver will accept.
    pub fn for_model(bytes: u64, chunks: u32, max_bytes: usize) -> Result<Self, FlError> {
        let asm = Self::with_chunk_len(0, bytes, chunks, max_bytes, CHUNK_BYTES)?;
        if asm.expected == 0 {
            return Err(FlError::BadChunk { index: 0, total: 0 });
        }
        Ok(asm)
    }
}

impl<T> ChunkAssembler<T> {
    fn with_chunk_len(
        round: u32,
        values: u64,
        chunks: u32,
        max_values: usize,
        per_chunk: usize,
    ) -> Result<Self, FlError> {
        let expected = usize::try_from(values).unwrap_or(usize::MAX);
        if expected > max_values {
            return Err(FlError::UpdateRejected {
                agent: [0; 32],
                reason: RejectReason::WrongShape {
                    got: expected,
                    expected: max_values,
                },
            });
        }
        if chunks as usize != expected.div_ceil(per_chunk) {
            return Err(FlError::BadChunk {
                index: 0,
                total: chunks,
            });
        }
        Ok(Self {
            round,
            expected,
            chunks,
            next: 0,
            per_chunk,
            values: Vec::with_capacity(expected),
        })
    }

    /// Adds a chunk; returns the weights once the last one arrived.
    pub fn push(
        &mut self,
        round: u32,
        index: u32,
        values: Vec<T>,
    ) -> Result<Option<Vec<T>>, FlError> {
        let bad = FlError::BadChunk {
            index,
            total: self.chunks,
        };
        if round != self.round || index != self.next || index >= self.chunks {
            return Err(bad);
        }
        let want = if index + 1 == self.chunks {
            self.expected - self.values.len()
        } else {
            self.per_chunk
        };
        if values.len() != want {
            return Err(bad);
        }
        self.values.extend(values);
        self.next += 1;
        Ok((self.next == self.chunks).then(|| std::mem::take(&mut self.values)))
    }

    pub fn is_empty_model(&self) -> bool {
        self.expected == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let weights: Vec<f32> = (0..(CHUNK_VALUES * 2 + 17)).map(|i| i as f32).collect();
        let msgs = weight_messages(WeightsPurpose::Update, 3, &weights);
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut dec = FrameDecoder::default();
        let mut got = Vec::new();
        for piece in bytes.chunks(777) {
            dec.push(piece);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        let Message::WeightsHeader {
            round,
            values,
            chunks,
            ..
        } = got[0]
        else {
            panic!("header first")
        };
        let mut asm = ChunkAssembler::new(round, values, chunks, 1 << 20).unwrap();
        let mut out = None;
        for m in got.into_iter().skip(1) {
            if let Message::WeightsChunk {
                round,
                index,
                values,
            } = m
            {
                out = asm.push(round, index, values).unwrap();
            }
        }
        assert_eq!(out.unwrap(), weights);
    }

    #[test]
    fn bad_frames_and_chunks_are_refused() {
        let mut dec = FrameDecoder::default();
        dec.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(
            dec.next_message(),
            Err(FlError::FrameTooLarge { .. })
        ));
        // A future protocol version.
        let body = postcard::to_stdvec(&Envelope {
            version: 99,
            message: Message::TaskDone {
                task_id: "t".into(),
            },
        })
        .unwrap();
        assert!(matches!(
            decode_body(&body),
            Err(FlError::ProtocolVersion { found: 99, .. })
        ));
        // Oversized model refused at the header.
        assert!(ChunkAssembler::<f32>::new(0, 10_000_000, 306, 1000).is_err());
        // Out-of-order and wrong-sized chunks refused.
        let mut asm = ChunkAssembler::new(0, 10, 1, 100).unwrap();
        assert!(asm.push(0, 1, vec![0.0; 10]).is_err());
        assert!(asm.push(0, 0, vec![0.0; 11]).is_err());
        assert_eq!(asm.push(0, 0, vec![1.0; 10]).unwrap(), Some(vec![1.0; 10]));
    }

    #[test]
    fn onnx_bytes_travel_in_chunks_and_oversized_models_are_refused_at_the_header() {
        let model: Vec<u8> = (0..CHUNK_BYTES * 2 + 5).map(|i| i as u8).collect();
        let chunks: Vec<Message> = model_chunks(&model).collect();
        assert_eq!(chunks.len() as u32, model_chunk_count(model.len()));
        let mut asm =
            ChunkAssembler::for_model(model.len() as u64, chunks.len() as u32, 1 << 20).unwrap();
        let mut out = None;
        for m in chunks {
            let frame = encode(&m).unwrap();
            assert!(frame.len() <= MAX_FRAME + 4);
            let Message::ModelChunk { index, bytes } = decode_body(&frame[4..]).unwrap() else {
                panic!("a chunk")
            };
            out = asm.push(0, index, bytes).unwrap();
        }
        assert_eq!(out.unwrap(), model);
        assert!(ChunkAssembler::for_model(1 << 21, 8, 1 << 20).is_err());
        assert!(ChunkAssembler::for_model(0, 0, 1 << 20).is_err());
        assert!(ChunkAssembler::for_model(10, 2, 1 << 20).is_err());
    }

    #[test]
    fn version_1_messages_keep_version_1_frames_and_new_ones_need_version_2() {
        let old = Message::TaskDone {
            task_id: "t".into(),
        };
        let frame = encode(&old).unwrap();
        // A version-1 peer reads this frame exactly as before.
        let env: Envelope = postcard::from_bytes(&frame[4..]).unwrap();
        assert_eq!((env.version, &env.message), (1, &old));
        let new = Message::ModelChunk {
            index: 0,
            bytes: vec![1, 2, 3],
        };
        let frame = encode(&new).unwrap();
        assert_eq!(decode_body(&frame[4..]).unwrap(), new);
        let env: Envelope = postcard::from_bytes(&frame[4..]).unwrap();
        assert_eq!(env.version, 2);
        // An evaluation message claiming version 1 is refused.
        let forged = postcard::to_stdvec(&Envelope {
            version: 1,
            message: new,
        })
        .unwrap();
        assert!(matches!(
            decode_body(&forged),
            Err(FlError::ProtocolVersion { found: 1, .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut dec = FrameDecoder::default();
            dec.push(&bytes);
            for _ in 0..4 {
                if !matches!(dec.next_message(), Ok(Some(_))) { break; }
            }
        }

        #[test]
        fn any_message_round_trips(round in 0u32..1000, loss in -10f32..10.0, samples in 0u64..1_000_000) {
            let m = Message::UpdateDone { round, samples, loss };
            let frame = encode(&m).unwrap();
            proptest::prop_assert_eq!(decode_body(&frame[4..]).unwrap(), m);
        }
    }

    #[test]
    fn the_largest_secure_update_fits_one_frame() {
        let input = |n: usize| Message::SecAggFromAgent {
            task_id: "t".repeat(128),
            message: crate::secagg::FromAgent::Input(crate::secagg::MaskedInput {
                round: u32::MAX,
                from: [0xff; 32],
                values: vec![u32::MAX; n],
            }),
        };
        let frame = encode(&input(MAX_SECURE_PARAMS)).unwrap();
        assert!(frame.len() <= MAX_FRAME + 4);
        assert!(matches!(
            encode(&input(MAX_FRAME / 4)),
            Err(FlError::FrameTooLarge { .. })
        ));
    }
}
