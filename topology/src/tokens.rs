//! Token arithmetic for Cassandra's Murmur3 and Random partitioners, and the
//! cassandra.yaml token settings (single token or vnodes).
//!
//! A token is kept as its distance from the partitioner's minimum token (a
//! `u128`), so Murmur3 (−2^63 … 2^63−1) and Random (0 … 2^127) share one exact
//! integer code path: 2^127 does not fit an `i128`, and mixing signed and unsigned
//! offsets is where overflow bugs hide. This module knows nothing about racks,
//! data centers or the registry; `layout` and `plan` build on it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors of token parsing and token settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token {token:?} is not a valid {partitioner} token")]
    InvalidToken {
        token: String,
        partitioner: Partitioner,
    },
    #[error("position {position} is outside the {partitioner} ring")]
    OutOfRange {
        position: u128,
        partitioner: Partitioner,
    },
    #[error("num_tokens must be between 1 and {max}, got {got}")]
    NumTokens { got: u32, max: u32 },
    #[error("allocate_tokens_for_local_replication_factor must be between 1 and {max}, got {got}")]
    ReplicationFactor { got: u32, max: u32 },
    #[error("unknown partitioner {0:?}")]
    UnknownPartitioner(String),
}

/// The partitioners Anchises can compute tokens for. ByteOrdered is left out on
/// purpose: it has no fixed token space to divide, and nobody should start a new
/// cluster on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// `org.apache.cassandra.dht.Murmur3Partitioner`: tokens are `i64`.
    Murmur3,
    /// `org.apache.cassandra.dht.RandomPartitioner`: tokens are 0 … 2^127 (the
    /// absolute value of a signed 128-bit MD5, see `FBUtilities.hashToBigInteger`).
    Random,
}

const MURMUR3_MIN: i128 = i64::MIN as i128;
const RANDOM_MAX: u128 = 1 << 127;

impl Partitioner {
    /// The class name that goes into cassandra.yaml `partitioner`.
    pub fn class_name(self) -> &'static str {
        match self {
            Partitioner::Murmur3 => "org.apache.cassandra.dht.Murmur3Partitioner",
            Partitioner::Random => "org.apache.cassandra.dht.RandomPartitioner",
        }
    }

    /// The size of the ring that evenly spaced tokens divide: max − min as Priam
    /// counts it (2^64 for Murmur3, where max − min + 1 tokens exist, and 2^127 for
    /// Random, whose 0 and 2^127 sit on the same point of the circle).
    pub fn ring_size(self) -> u128 {
        match self {
            Partitioner::Murmur3 => 1 << 64,
            Partitioner::Random => RANDOM_MAX,
        }
    }

    /// The largest valid position: 2^64 − 1 (that is `i64::MAX`) for Murmur3,
    /// 2^127 for Random.
    pub fn max_position(self) -> u128 {
        match self {
            Partitioner::Murmur3 => u64::MAX as u128,
            Partitioner::Random => RANDOM_MAX,
        }
    }

    /// The partitioner's minimum token.
    pub fn min_token(self) -> Token {
        Token {
            partitioner: self,
            position: 0,
        }
    }

    /// The partitioner's maximum token.
    pub fn max_token(self) -> Token {
        Token {
            partitioner: self,
            position: self.max_position(),
        }
    }

    /// The token `position` steps past the minimum token.
    pub fn token_at(self, position: u128) -> Result<Token, TokenError> {
        if position > self.max_position() {
            return Err(TokenError::OutOfRange {
                position,
                partitioner: self,
            });
        }
        Ok(Token {
            partitioner: self,
            position,
        })
    }

    /// Parses a token as Cassandra prints it (`nodetool ring`, `system.local`).
    pub fn parse_token(self, text: &str) -> Result<Token, TokenError> {
        let invalid = || TokenError::InvalidToken {
            token: text.to_string(),
            partitioner: self,
        };
        let position = match self {
            Partitioner::Murmur3 => {
                let value: i64 = text.parse().map_err(|_| invalid())?;
                (i128::from(value) - MURMUR3_MIN) as u128
            }
            Partitioner::Random => text.parse::<u128>().map_err(|_| invalid())?,
        };
        self.token_at(position).map_err(|_| invalid())
    }

    /// Clockwise distance from `from` to `to`, modulo the ring size: the size of
    /// the range `(from, to]` that the node at `to` owns as primary replica.
    pub fn distance(self, from: Token, to: Token) -> u128 {
        let size = self.ring_size();
        let (a, b) = (from.position % size, to.position % size);
        if b >= a {
            b - a
        } else {
            size - a + b
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment flags work in tables.
        f.pad(match self {
            Partitioner::Murmur3 => "murmur3",
            Partitioner::Random => "random",
        })
    }
}

impl FromStr for Partitioner {
    type Err = TokenError;

    /// Accepts the short names and Cassandra's class names, short or qualified.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit('.').next().unwrap_or(s) {
            "murmur3" | "Murmur3Partitioner" => Ok(Partitioner::Murmur3),
            "random" | "RandomPartitioner" => Ok(Partitioner::Random),
            _ => Err(TokenError::UnknownPartitioner(s.to_string())),
        }
    }
}

/// One token of one partitioner. Ordering follows the ring from the minimum
/// token; comparing tokens of different partitioners is meaningless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token {
    partitioner: Partitioner,
    position: u128,
}

impl Token {
    pub fn partitioner(self) -> Partitioner {
        self.partitioner
    }

    /// Distance from the partitioner's minimum token.
    pub fn position(self) -> u128 {
        self.position
    }
}

/// Decimal, as cassandra.yaml `initial_token` and `nodetool ring` write it.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.partitioner {
            // In range by construction: position ≤ 2^64 − 1, so the sum fits i64.
            Partitioner::Murmur3 => write!(f, "{}", self.position as i128 + MURMUR3_MIN),
            Partitioner::Random => write!(f, "{}", self.position),
        }
    }
}

/// The position of ring slot `slot` out of `ring_nodes` evenly spaced slots:
/// ⌊slot × ring_size / ring_nodes⌋, computed exactly.
///
/// Priam computes `slot × ⌊ring_size / ring_nodes⌋`, which piles the whole
/// remainder (up to `ring_nodes − 1` tokens) onto the wrap-around range. Rounding
/// once instead keeps every range within one token of the ideal and differs from
/// Priam's token by less than `ring_nodes`. Splitting ring_size = q·n + r keeps
/// the products small: slot·q ≤ ring_size and slot·r < n² fit a `u128`.
///
/// Panics if `slot >= ring_nodes`: a slot outside the ring is a caller's bug.
pub fn spaced_position(partitioner: Partitioner, slot: u64, ring_nodes: u64) -> u128 {
    assert!(ring_nodes > 0 && slot < ring_nodes, "slot out of ring");
    let size = partitioner.ring_size();
    let n = u128::from(ring_nodes);
    let (q, r) = (size / n, size % n);
    u128::from(slot) * q + u128::from(slot) * r / n
}

/// How a node gets its tokens, as cassandra.yaml sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum TokenMode {
    /// One token per node, computed from the node's slot (Priam's way).
    Single,
    /// Cassandra allocates the tokens itself.
    Vnodes(VnodeConfig),
}

/// Vnode settings. Cassandra ≥ 4.0 allocates the tokens itself from these; we only
/// write them to cassandra.yaml and never compute vnode tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawVnodeConfig")]
pub struct VnodeConfig {
    num_tokens: u32,
    allocate_for_local_rf: u32,
}

#[derive(Deserialize)]
struct RawVnodeConfig {
    num_tokens: u32,
    allocate_for_local_rf: u32,
}

impl TryFrom<RawVnodeConfig> for VnodeConfig {
    type Error = TokenError;

    fn try_from(raw: RawVnodeConfig) -> Result<Self, Self::Error> {
        VnodeConfig::new(raw.num_tokens, raw.allocate_for_local_rf)
    }
}

impl VnodeConfig {
    /// More vnodes than this only slows repair and streaming; the Cassandra 4.0
    /// default went down from 256 to 16 for that reason (CASSANDRA-13701).
    pub const MAX_NUM_TOKENS: u32 = 256;
    /// The allocator balances for one replication factor per DC; beyond this it is
    /// almost certainly a typo.
    pub const MAX_REPLICATION_FACTOR: u32 = 16;

    pub fn new(num_tokens: u32, allocate_for_local_rf: u32) -> Result<Self, TokenError> {
        if !(1..=Self::MAX_NUM_TOKENS).contains(&num_tokens) {
            return Err(TokenError::NumTokens {
                got: num_tokens,
                max: Self::MAX_NUM_TOKENS,
            });
        }
        if !(1..=Self::MAX_REPLICATION_FACTOR).contains(&allocate_for_local_rf) {
            return Err(TokenError::ReplicationFactor {
                got: allocate_for_local_rf,
                max: Self::MAX_REPLICATION_FACTOR,
            });
        }
        Ok(VnodeConfig {
            num_tokens,
            allocate_for_local_rf,
        })
    }

    pub fn num_tokens(self) -> u32 {
        self.num_tokens
    }

    pub fn allocate_for_local_rf(self) -> u32 {
        self.allocate_for_local_rf
    }

    /// The cassandra.yaml settings, in the order they should be written.
    pub fn yaml_settings(self) -> Vec<(&'static str, String)> {
        vec![
            ("num_tokens", self.num_tokens.to_string()),
            (
                "allocate_tokens_for_local_replication_factor",
                self.allocate_for_local_rf.to_string(),
            ),
        ]
    }
}

impl Default for VnodeConfig {
    /// Cassandra 4.0's recommended defaults.
    fn default() -> Self {
        VnodeConfig {
            num_tokens: 16,
            allocate_for_local_rf: 3,
        }
    }
}

/// The cassandra.yaml settings of a single-token node.
pub fn single_token_yaml_settings(token: Token) -> Vec<(&'static str, String)> {
    vec![
        ("num_tokens", "1".to_string()),
        ("initial_token", token.to_string()),
    ]
}
