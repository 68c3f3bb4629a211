//! Tests of the snapshot handoff's placement of reads among the stream's transactions.

use super::SnapState;
use crate::position::{BinlogPos, Coord};
use crate::snapshot::Window;
use binlake_sink::TableId;

fn at(pos: u64) -> BinlogPos {
    BinlogPos {
        file: "binlog.000001".into(),
        pos,
    }
}

/// Active-active: a position `via` is seen at gets the highest version taken so far, not
/// `via`'s own (lower when another server delivered a transaction of another domain first).
#[test]
fn history_versions_never_go_below_what_was_taken() {
    let mut s = SnapState::default();
    s.changed
        .insert(TableId::new("shop", "t"), Default::default());
    s.active_active(
        &"mariadb-gtid:1-1-9,2-2-11"
            .parse::<crate::position::Position>()
            .unwrap(),
    );
    let p = |t: &str| t.parse::<crate::position::Position>().unwrap();
    // 2-2-12 from another server (21), then 1-1-10 from via (22)
    s.took(
        21 << 16,
        &p("mariadb-gtid:1-1-9,2-2-12"),
        None,
        false,
        [].into_iter(),
    );
    s.took(
        22 << 16,
        &p("mariadb-gtid:1-1-10,2-2-12"),
        None,
        true,
        [].into_iter(),
    );
    s.saw(&at(100), Some(22 << 16));
    // via delivers 2-2-12 (its own count: 22) after 1-1-10
    s.seen_on_via(p("mariadb-gtid:1-1-10,2-2-12"));
    s.saw(&at(200), Some(0));
    let w = Window {
        low: at(150),
        high: at(250),
    };
    s.saw(&at(300), None);
    let (low, high) = s.window_versions(&w).unwrap().unwrap();
    assert_eq!(low, (22 << 16) + 1);
    assert_eq!(high, (22 << 16) + 1);
    assert!(s.drops_every_changed_key());
}

/// Active-active with one domain: `via`'s own version is exact. A change taken ahead (seq
/// 101, from another server) stays at or above the drop threshold of a read `via` places
/// before it, though `via` is seen at 100 after it was taken.
#[test]
fn one_domain_keeps_vias_own_versions() {
    let mut s = SnapState::default();
    s.changed
        .insert(TableId::new("shop", "t"), Default::default());
    let p = |t: &str| t.parse::<crate::position::Position>().unwrap();
    s.active_active(&p("mariadb-gtid:0-1-99"));
    s.took(
        101 << 16,
        &p("mariadb-gtid:0-1-101"),
        None,
        false,
        [].into_iter(),
    );
    s.seen_on_via(p("mariadb-gtid:0-1-100"));
    s.saw(&at(100), Some(100 << 16));
    let w = Window {
        low: at(100),
        high: at(100),
    };
    let (low, _) = s.window_versions(&w).unwrap().unwrap();
    assert!(
        low <= 101 << 16,
        "the change taken ahead is dropped from the read"
    );
    assert!(!s.drops_every_changed_key());
}

/// A read's window takes its version from `high` and its drop threshold from `low`, and
/// waits until the stream has read past `high`.
#[test]
fn a_window_is_placed_by_its_bounds() {
    let mut s = SnapState::default();
    s.changed
        .insert(TableId::new("shop", "t"), Default::default()); // a snapshot in progress
    let w = Window {
        low: at(150),
        high: at(250),
    };
    s.saw(&at(100), Some(1 << 16)); // A
    s.saw(&at(200), Some(2 << 16)); // B: in the window
    assert!(
        s.window_versions(&w).is_none(),
        "the stream has not passed high"
    );
    s.saw(&at(240), None); // a heartbeat short of high
    assert!(s.window_versions(&w).is_none());
    s.saw(&at(300), Some(3 << 16)); // C: after the window
    assert_eq!(
        s.window_versions(&w).unwrap().unwrap(),
        ((1 << 16) + 1, (2 << 16) + 1),
        "rows of keys B changed are dropped (B >= low), the rest placed after B"
    );
    // a window with nothing between its bounds
    let w = Window {
        low: at(200),
        high: at(200),
    };
    assert_eq!(
        s.window_versions(&w).unwrap().unwrap(),
        ((2 << 16) + 1, (2 << 16) + 1)
    );
    // before the run's first transaction: the start position's version
    let mut f = SnapState {
        floor: (Coord::default(), 5 << 16),
        ..Default::default()
    };
    f.saw(&at(90), None);
    let w = Window {
        low: at(80),
        high: at(90),
    };
    assert_eq!(
        f.window_versions(&w).unwrap().unwrap(),
        ((5 << 16) + 1, (5 << 16) + 1)
    );
}

/// Reads of a snapshot queued now start after the stream's position and the run's start.
#[test]
fn the_read_floor_is_the_later_of_the_start_and_the_stream() {
    let mut s = SnapState {
        start_floor: at(500),
        ..Default::default()
    };
    assert_eq!(s.read_floor(), at(500));
    s.saw(&at(400), None);
    assert_eq!(s.read_floor(), at(500));
    s.saw(&at(600), Some(1 << 16));
    assert_eq!(s.read_floor(), at(600));
}

#[test]
fn later_reads_at_the_same_point_win_and_stay_below_the_next_transaction() {
    let mut s = SnapState::default();
    let a = 7u64 << 16; // a GTID version
    assert_eq!(s.next_snapshot_version(a + 1), a + 1);
    assert_eq!(s.next_snapshot_version(a + 1), a + 2, "a later read wins");
    assert_eq!(s.next_snapshot_version(a + 1), a + 3);
    // after the next transaction, the block starts again
    let b = 8u64 << 16;
    assert_eq!(s.next_snapshot_version(b + 1), b + 1);
    // a full block saturates below the next transaction
    s.last_version = a | 0xffff;
    assert_eq!(s.next_snapshot_version(a + 1), a | 0xffff);
    // file-position versions reserve nothing
    let mut f = SnapState::default();
    assert_eq!(f.next_snapshot_version(1235), 1235);
    assert_eq!(f.next_snapshot_version(1235), 1235);
}
