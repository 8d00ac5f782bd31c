//! The agent's whole part in a secure round, sans IO: it takes the round's
//! setup, then the trained model, then each relayed message, and answers
//! with what to send. The QUIC agent and the simulation both drive it.
//!
//! Once the model is trained the agent keeps only its encoded, noised
//! vector, never the trained weights, and that vector leaves it only masked.

use rand::CryptoRng;

use super::{Client, Encoding, FromAgent, Setup, ToAgent};
use crate::{AgentId, RejectReason};

/// One agent's secure-aggregation state across rounds.
#[derive(Debug, Default)]
pub struct Participant {
    /// The setup of the round being trained for.
    pending: Option<(Setup, Encoding)>,
    client: Option<Client>,
    input: Option<Vec<u32>>,
}

impl Participant {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `round` runs under secure aggregation for this agent.
    pub fn is_secure(&self, round: u32) -> bool {
        self.pending.as_ref().is_some_and(|(s, _)| s.round == round)
    }

    /// The model of `round` is trained: the key advertisement to send, or
    /// `None` when the round is not secure.
    pub fn trained(
        &mut self,
        me: AgentId,
        round: u32,
        global: &[f32],
        trained: &[f32],
        rng: &mut impl CryptoRng,
    ) -> Result<Option<FromAgent>, RejectReason> {
        if !self.is_secure(round) {
            return Ok(None);
        }
        let (setup, encoding) = self.pending.take().expect("checked");
        if trained.len() != setup.dim || global.len() != setup.dim {
            return Err(RejectReason::WrongShape {
                got: trained.len(),
                expected: setup.dim,
            });
        }
        let input = encoding.encode(global, trained, rng);
        let (client, advert) = Client::new(setup, me, rng)?;
        self.client = Some(client);
        self.input = Some(input);
        Ok(Some(FromAgent::Advert(advert)))
    }

    /// A message from the coordinator; the answer to send, if any.
    pub fn handle(&mut self, message: ToAgent) -> Result<Option<FromAgent>, RejectReason> {
        Ok(match message {
            ToAgent::Setup { setup, encoding } => {
                // A new round replaces whatever an earlier one left.
                self.client = None;
                self.input = None;
                self.pending = Some((setup, encoding));
                None
            }
            ToAgent::Keys(keys) => {
                let client = self.client.as_mut().ok_or(RejectReason::NoOpenRound)?;
                Some(FromAgent::Shares(client.share_keys(&keys)?))
            }
            ToAgent::Shares(shares) => {
                let client = self.client.as_mut().ok_or(RejectReason::NoOpenRound)?;
                let input = self.input.take().ok_or(RejectReason::Duplicate)?;
                Some(FromAgent::Input(client.masked_input(&shares, &input)?))
            }
            ToAgent::Unmask(unmask) => {
                let mut client = self.client.take().ok_or(RejectReason::NoOpenRound)?;
                Some(FromAgent::Reveal(client.reveal(&unmask)?))
            }
        })
    }
}
