//! Typed source positions and the `_binlake_version` derived from them.
//!
//! Three position flavours, each with exact semantics and a `Display`/`FromStr` round trip;
//! [`Position`] is stored typed in the checkpoint and serialised as that text (a checkpoint
//! written by any binlake version loads). Only [`BinlogPos`] is ordered (by [`Coord`]: file index,
//! then offset, on one server); a GTID state is not a total order.
//! - [`MariaGtidState`]: MariaDB's `gtid_slave_pos` form, the last GTID seen per replication domain,
//!   `0-1-100,1-2-7`. Resuming sends it as `@slave_connect_state`.
//! - [`MysqlGtidSet`]: MySQL's executed GTID set, `uuid:1-10:12,uuid:tag:1-3`.
//! - [`BinlogPos`]: `file:position`, the fallback for servers without GTID.
//!
//! ## The version contract
//! `_binlake_version` must strictly increase with source commit order and be the same for the same
//! transaction after a restart or when read from another replica of the same topology. We derive it
//! from the transaction's place in the GTID history, which every server of a topology agrees on:
//! - MariaDB: the **sum over domains of the last sequence number** after the transaction is applied.
//!   Every new GTID raises its domain's sequence number, so the sum strictly increases in binlog order.
//!   With one domain (the common case) it is just the GTID's seq_no, identical on every replica.
//!   With several domains written concurrently, servers interleave them differently in their
//!   binlogs, so the sum after a given transaction differs between servers. No number can be
//!   the same on every server and increase in each one's order, so the version follows the order
//!   binlake takes transactions in (strictly increasing, checkpointed as a GTID state so a
//!   restart or failover continues above it). Per key this is the source's order as long as one
//!   key is written from one domain at a time; the snapshot handoff under active-active reading
//!   compares GTID states, not versions (binlake's `pipeline::ahead`).
//! - MySQL: the **number of transactions in the executed GTID set** after the transaction, which is
//!   the same on every server that applied the same history in commit order.
//! - File/position (no GTID): `(binlog file index << 40) | end position`. Stable across restarts of
//!   the same server, meaningless across servers (binlake refuses to fail over without GTID).
//!
//! GTID-derived ordinals are shifted left by [`VERSION_SUB_BITS`] bits; the low bits order snapshot
//! reads against the stream, and are zero for binlog changes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Low bits of a GTID-derived version reserved for ordering snapshot rows.
pub const VERSION_SUB_BITS: u32 = 16;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid position `{text}`: {reason}")]
pub struct PositionParseError {
    pub text: String,
    pub reason: &'static str,
}

fn perr(text: &str, reason: &'static str) -> PositionParseError {
    PositionParseError {
        text: text.to_string(),
        reason,
    }
}

/// A MariaDB GTID: domain-server-sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl FromStr for MariaGtid {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = s.trim().split('-');
        let (Some(d), Some(sv), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(perr(s, "a MariaDB GTID is domain-server-sequence"));
        };
        Ok(MariaGtid {
            domain: d.parse().map_err(|_| perr(s, "bad domain id"))?,
            server: sv.parse().map_err(|_| perr(s, "bad server id"))?,
            seq: n.parse().map_err(|_| perr(s, "bad sequence number"))?,
        })
    }
}

/// The last GTID applied per domain (MariaDB `gtid_slave_pos` form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MariaGtidState {
    pub domains: BTreeMap<u32, MariaGtid>,
}

impl MariaGtidState {
    pub fn apply(&mut self, g: MariaGtid) {
        self.domains.insert(g.domain, g);
    }
    /// Sum of per-domain sequence numbers: the version ordinal (see module doc).
    pub fn ordinal(&self) -> u64 {
        self.domains
            .values()
            .fold(0u64, |a, g| a.saturating_add(g.seq))
    }
    pub fn get(&self, domain: u32) -> Option<&MariaGtid> {
        self.domains.get(&domain)
    }
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
    /// True when every domain of `self` is at or behind `other` (other has seen all we have).
    pub fn is_covered_by(&self, other: &MariaGtidState) -> bool {
        self.domains
            .iter()
            .all(|(d, g)| other.domains.get(d).is_some_and(|o| o.seq >= g.seq))
    }
}

impl fmt::Display for MariaGtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.domains.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for MariaGtidState {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut st = MariaGtidState::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: MariaGtid = part.parse()?;
            if st.domains.insert(g.domain, g).is_some() {
                return Err(perr(s, "a domain appears twice"));
            }
        }
        Ok(st)
    }
}

/// A MySQL server UUID (source id of a GTID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
        if hex.len() != 32 {
            return Err(perr(s, "a UUID has 32 hex digits"));
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let t = std::str::from_utf8(pair).map_err(|_| perr(s, "bad hex"))?;
            out[i] = u8::from_str_radix(t, 16).map_err(|_| perr(s, "bad hex"))?;
        }
        Ok(Uuid(out))
    }
}

/// One MySQL GTID: `uuid[:tag]:gno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlGtid {
    pub sid: Uuid,
    pub tag: String,
    pub gno: u64,
}

impl fmt::Display for MysqlGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag.is_empty() {
            write!(f, "{}:{}", self.sid, self.gno)
        } else {
            write!(f, "{}:{}:{}", self.sid, self.tag, self.gno)
        }
    }
}

/// A MySQL GTID set: per (uuid, tag), sorted disjoint half-open intervals `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqlGtidSet {
    pub sets: BTreeMap<(Uuid, String), Vec<(u64, u64)>>,
}

impl MysqlGtidSet {
    pub fn add(&mut self, sid: Uuid, tag: &str, gno: u64) {
        self.add_interval(sid, tag, gno, gno + 1);
    }
    pub fn add_interval(&mut self, sid: Uuid, tag: &str, start: u64, end: u64) {
        let v = self.sets.entry((sid, tag.to_string())).or_default();
        v.push((start, end));
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for &(s, e) in v.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *v = merged;
    }
    pub fn contains(&self, sid: Uuid, tag: &str, gno: u64) -> bool {
        self.sets
            .get(&(sid, tag.to_string()))
            .is_some_and(|v| v.iter().any(|&(s, e)| gno >= s && gno < e))
    }
    /// Number of transactions in the set: the version ordinal for MySQL.
    pub fn count(&self) -> u64 {
        self.sets.values().flatten().map(|(s, e)| e - s).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

impl fmt::Display for MysqlGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((sid, tag), ivs) in &self.sets {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{sid}")?;
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for (s, e) in ivs {
                if e - s == 1 {
                    write!(f, ":{s}")?;
                } else {
                    write!(f, ":{}-{}", s, e - 1)?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for MysqlGtidSet {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = MysqlGtidSet::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split(':');
            let sid: Uuid = it.next().unwrap_or_default().parse()?;
            let mut tag = String::new();
            for iv in it {
                if iv
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                {
                    tag = iv.to_string();
                    continue;
                }
                let (a, b) = match iv.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (iv, iv),
                };
                let a: u64 = a.parse().map_err(|_| perr(s, "bad interval start"))?;
                let b: u64 = b.parse().map_err(|_| perr(s, "bad interval end"))?;
                if a == 0 || b < a {
                    return Err(perr(s, "bad interval"));
                }
                set.add_interval(sid, &tag, a, b + 1);
            }
        }
        Ok(set)
    }
}

/// A binlog file name and byte offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

/// Where a [`BinlogPos`] lies in one server's binlog: file index, then offset. Compact (no file
/// name) for the histories that keep one per transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Coord {
    pub file_index: u64,
    pub pos: u64,
}

/// Binlog order on one server (file names with the same base; the index, not the text, so
/// `binlog.1000000` follows `binlog.999999`).
impl Ord for BinlogPos {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key()
            .cmp(&other.key())
            .then_with(|| self.file.cmp(&other.file))
    }
}

impl PartialOrd for BinlogPos {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl BinlogPos {
    /// Numeric suffix of the file name (`binlog.000042` -> 42).
    pub fn file_index(&self) -> u64 {
        self.file
            .rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
    /// Binlog order on one server.
    pub fn key(&self) -> Coord {
        Coord {
            file_index: self.file_index(),
            pos: self.pos,
        }
    }
    /// Version ordinal for file/position mode (see module doc).
    pub fn ordinal(&self) -> u64 {
        ((self.file_index() & 0x7F_FFFF) << 40) | (self.pos & 0xFF_FFFF_FFFF)
    }
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl FromStr for BinlogPos {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (file, pos) = s
            .rsplit_once(':')
            .ok_or_else(|| perr(s, "expected file:position"))?;
        if file.is_empty() {
            return Err(perr(s, "empty file name"));
        }
        Ok(BinlogPos {
            file: file.to_string(),
            pos: pos.parse().map_err(|_| perr(s, "bad offset"))?,
        })
    }
}

impl serde::Serialize for BinlogPos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BinlogPos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a stream resumes: the GTID state when the server has GTIDs, else a file position.
/// Serialised as its text (`mariadb-gtid:0-1-42`, `mysql-gtid:...`, `file:binlog.000003:1234`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    MariaDb(MariaGtidState),
    Mysql(MysqlGtidSet),
    File(BinlogPos),
}

impl Position {
    /// The version ordinal of the last transaction this position includes.
    pub fn version(&self) -> u64 {
        match self {
            Position::MariaDb(s) => s.ordinal() << VERSION_SUB_BITS,
            Position::Mysql(s) => s.count() << VERSION_SUB_BITS,
            Position::File(p) => p.ordinal(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::MariaDb(s) => write!(f, "mariadb-gtid:{s}"),
            Position::Mysql(s) => write!(f, "mysql-gtid:{s}"),
            Position::File(p) => write!(f, "file:{p}"),
        }
    }
}

/// The text of [`Position::default`].
const NO_POSITION: &str = "file::0";

impl Default for Position {
    fn default() -> Self {
        Position::File(BinlogPos::default())
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Position {
    type Err = PositionParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The default ("no position yet", before the stream has said where it is) must read
        // back too: a checkpoint committed then is otherwise unreadable, and the target stuck.
        if s == NO_POSITION {
            return Ok(Position::default());
        }
        if let Some(r) = s.strip_prefix("mariadb-gtid:") {
            Ok(Position::MariaDb(r.parse()?))
        } else if let Some(r) = s.strip_prefix("mysql-gtid:") {
            Ok(Position::Mysql(r.parse()?))
        } else if let Some(r) = s.strip_prefix("file:") {
            Ok(Position::File(r.parse()?))
        } else {
            Err(perr(
                s,
                "expected mariadb-gtid:, mysql-gtid: or file: prefix",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maria_state_round_trip_and_ordinal() {
        let s: MariaGtidState = "0-1-100,2-5-7".parse().unwrap();
        assert_eq!(s.to_string(), "0-1-100,2-5-7");
        assert_eq!(s.ordinal(), 107);
        assert!("0-1".parse::<MariaGtidState>().is_err());
        assert!("0-1-2,0-1-3".parse::<MariaGtidState>().is_err());
    }

    #[test]
    fn mysql_set_merge_count_display() {
        let u: Uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562".parse().unwrap();
        let mut s = MysqlGtidSet::default();
        for g in [1, 2, 3, 5, 4, 9] {
            s.add(u, "", g);
        }
        assert_eq!(s.to_string(), "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:9");
        assert_eq!(s.count(), 6);
        let back: MysqlGtidSet = s.to_string().parse().unwrap();
        assert_eq!(back, s);
        let tagged: MysqlGtidSet = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-3:blue:1-2"
            .parse()
            .unwrap();
        assert_eq!(tagged.count(), 5);
        assert_eq!(tagged.to_string(), "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-3,3e11fa47-71ca-11e1-9e33-c80aa9429562:blue:1-2");
    }

    #[test]
    fn positions_round_trip() {
        for t in [
            "mariadb-gtid:0-1-5",
            "file:binlog.000003:1234",
            "mysql-gtid:3e11fa47-71ca-11e1-9e33-c80aa9429562:1-2",
        ] {
            let p: Position = t.parse().unwrap();
            assert_eq!(p.to_string(), t);
        }
        let a: Position = "file:binlog.000003:1234".parse().unwrap();
        let b: Position = "file:binlog.000004:4".parse().unwrap();
        assert!(a.version() < b.version());
        // stored as text: a checkpoint written before positions were typed loads
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"file:binlog.000003:1234\"");
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), a);
    }

    #[test]
    fn binlog_positions_order_by_file_index_then_offset() {
        let p = |s: &str| s.parse::<BinlogPos>().unwrap();
        assert!(p("binlog.000009:900") < p("binlog.000010:4"));
        assert!(p("binlog.999999:900") < p("binlog.1000000:4"));
        assert!(p("binlog.000010:4") < p("binlog.000010:5"));
    }
}
