//! Tests of the log: appends, flushes, retention of batch ids, the
//! entry codec and credentials, on a real RocksDB in a temporary directory.

use leakwatch_proto::v1::{DeviceInfo, FlowRecord};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use super::entry::{ENTRY_HEADER, ENTRY_VERSION, ENTRY_VERSION_PLAIN};
use super::*;

fn batch(id: &str, n: usize) -> ReportBatch {
    ReportBatch {
        batch_id: id.into(),
        sent_at_unix_ms: 1,
        device: Some(DeviceInfo { device_pseudonym: "d".into(), ..Default::default() }),
        records: (0..n).map(|i| FlowRecord { dst_port: 443, bytes_out: i as u64, ..Default::default() }).collect(),
    }
}

#[test]
fn a_flush_range_ends_within_its_byte_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = DurableLog::open(dir.path()).expect("open");
    let sizes: Vec<usize> = (1..=3)
        .map(|i| {
            let b = batch(&format!("b{i}"), i * 10);
            log.append("a", &b, 5).expect("append");
            let entry = encode_entry_of("a", 5, &b).entry;
            assert_eq!(message_len(&entry), decode_entry(&entry).expect("decodes").encoded_len());
            message_len(&entry)
        })
        .collect();
    assert_eq!(log.end_within(1, 3, usize::MAX).expect("all"), 3);
    assert_eq!(log.end_within(1, 3, sizes[0] + sizes[1]).expect("two"), 2);
    assert_eq!(log.end_within(1, 3, sizes[0] + sizes[1] - 1).expect("one"), 1);
    // The first entry goes in even when it alone is over the budget.
    assert_eq!(log.end_within(2, 3, 0).expect("at least one"), 2);
    assert_eq!(log.end_within(1, 2, usize::MAX).expect("up to `to`"), 2);
}

#[test]
fn append_dedups_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = DurableLog::open(dir.path()).expect("open");
        assert!(matches!(log.append("a", &batch("b1", 3), 5).expect("append"), AppendOutcome::Accepted { seq: 1, .. }));
        let mut resent = batch("b1", 3);
        resent.sent_at_unix_ms = 99;
        assert_eq!(log.append("a", &resent, 6).expect("dup"), AppendOutcome::Duplicate { records: 3 });
        assert!(matches!(log.append("a", &batch("b1", 4), 7), Err(Error::Conflict(_))));
        assert!(matches!(log.append("a", &batch("b2", 1), 8).expect("append"), AppendOutcome::Accepted { seq: 2, .. }));
        assert_eq!(log.durable_upto(), 2);
    }
    let log = DurableLog::open(dir.path()).expect("reopen");
    let (wm, tail) = log.tail().expect("tail");
    assert_eq!((wm, tail.len()), (0, 2));
    log.commit_flush(1).expect("commit");
    let (wm, tail) = log.tail().expect("tail");
    assert_eq!((wm, tail.len()), (1, 1));
    assert_eq!(log.append("a", &batch("b1", 3), 9).expect("dup after flush"), AppendOutcome::Duplicate { records: 3 });
    assert!(matches!(log.append("a", &batch("b3", 1), 10).expect("append"), AppendOutcome::Accepted { seq: 3, .. }));
}

/// Batch ids are the agent's choice, so another
/// agent's batch with the same id is its own batch, neither answered
/// `duplicate` (before, it was) nor able to make the first agent's
/// batch a conflict.
#[test]
fn batch_ids_are_unique_per_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = DurableLog::open(dir.path()).expect("open");
    let mut other = batch("b1", 2);
    other.records[0].bytes_out = 99;
    assert!(matches!(log.append("agent-b", &other, 1).expect("b first"), AppendOutcome::Accepted { .. }));
    assert!(matches!(log.append("agent-a", &batch("b1", 3), 2).expect("a"), AppendOutcome::Accepted { .. }));
    assert_eq!(log.append("agent-b", &other, 3).expect("b retry"), AppendOutcome::Duplicate { records: 2 });
    assert_eq!(log.append("agent-a", &batch("b1", 3), 4).expect("a retry"), AppendOutcome::Duplicate { records: 3 });
    assert!(matches!(log.append("agent-a", &other, 5), Err(Error::Conflict(_))), "a's own id, other content");
    // An agent that enrolled again (a new agent id) resends its batch.
    assert_eq!(log.append("agent-b2", &other, 6).expect("re-enrolled"), AppendOutcome::Duplicate { records: 2 });
    // An id an earlier release stored alone: the same content is a
    // duplicate, other content is another agent's batch.
    let digest = encode_entry_of("x", 0, &batch("old", 1)).digest;
    let mut v = 9u64.to_be_bytes().to_vec();
    v.extend_from_slice(&digest);
    v.extend_from_slice(&1u32.to_be_bytes());
    log.db().expect("db").put_cf(cf(&log.db().expect("db"), CF_BATCH_IDS).expect("cf"), "old", v).expect("put");
    assert_eq!(log.append("agent-a", &batch("old", 1), 6).expect("legacy"), AppendOutcome::Duplicate { records: 1 });
    assert!(matches!(log.append("agent-c", &batch("old", 2), 7).expect("other"), AppendOutcome::Accepted { .. }));
}

/// The date `n` days after 1970-01-01.
fn day(n: i64) -> chrono::NaiveDate {
    let epoch = chrono::DateTime::UNIX_EPOCH.date_naive();
    epoch.checked_add_signed(chrono::TimeDelta::days(n)).expect("a date")
}

/// A batch whose newest record starts at `day` (days since 1970).
fn batch_of_day(id: &str, day: i64) -> ReportBatch {
    let mut b = batch(id, 2);
    b.records[0].window_start_unix_s = day * 86_400 - 86_400;
    b.records[1].window_start_unix_s = day * 86_400 + 86_399;
    b
}

#[test]
fn ids_of_flushed_batches_whose_days_retention_deleted_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = DurableLog::open(dir.path()).expect("open");
    let accepted = |b: &ReportBatch| matches!(log.append("a", b, 1).expect("append"), AppendOutcome::Accepted { .. });
    for (id, day) in [("old", 100), ("edge", 109), ("kept", 110), ("legacy", 50), ("unflushed", 90)] {
        assert!(accepted(&batch_of_day(id, day)), "{id}");
    }
    // "legacy" stands for an id stored before batch days were: no entry.
    let legacy = batch_day_key(newest_day(&batch_of_day("legacy", 50)), &batch_id_key("a", "legacy"));
    log.db().expect("db").delete_cf(cf(&log.db().expect("db"), CF_BATCH_DAYS).expect("cf"), legacy).expect("delete");
    log.commit_flush(4).expect("commit");

    // Only batches up to the watermark read before retention go.
    assert_eq!(log.expire_batch_ids(day(110), 3, u64::MAX).expect("expire"), 2);
    assert_eq!(log.expire_batch_ids(day(110), 4, u64::MAX).expect("expire"), 0, "the unflushed batch keeps its id");
    for (id, day) in [("kept", 110), ("legacy", 50), ("unflushed", 90)] {
        let dup = log.append("a", &batch_of_day(id, day), 1).expect("dup");
        assert_eq!(dup, AppendOutcome::Duplicate { records: 2 }, "{id}");
    }
    // A retry of a forgotten batch is stored again, and forgotten with
    // the next pass once flushed.
    assert!(accepted(&batch_of_day("old", 100)));
    assert!(accepted(&batch_of_day("edge", 109)));
    log.commit_flush(7).expect("commit");
    // Oldest days first, `limit` at a time.
    assert_eq!(log.expire_batch_ids(day(110), 7, 2).expect("expire"), 2, "unflushed and old");
    assert!(accepted(&batch_of_day("unflushed", 90)));
    assert!(accepted(&batch_of_day("old", 100)));
    let dup = log.append("a", &batch_of_day("edge", 109), 1).expect("dup");
    assert_eq!(dup, AppendOutcome::Duplicate { records: 2 }, "past the limit");
    assert_eq!(log.expire_batch_ids(day(110), 7, u64::MAX).expect("expire"), 1, "edge");
    assert!(accepted(&batch_of_day("edge", 109)));
    assert_eq!(log.expire_batch_ids(day(200), 0, u64::MAX).expect("expire"), 0);
    assert_eq!(log.expire_batch_ids(day(-5), 10, u64::MAX).expect("expire"), 0);
    // Entries stored after a range went are expired by later calls;
    // an unflushed one amid them stays.
    assert!(accepted(&batch_of_day("late", 105)));
    log.commit_flush(10).expect("commit");
    assert_eq!(log.expire_batch_ids(day(110), 10, u64::MAX).expect("expire"), 3, "unflushed, old and edge");
    let left = log
        .db()
        .expect("db")
        .iterator_cf(cf(&log.db().expect("db"), CF_BATCH_DAYS).expect("cf"), IteratorMode::Start)
        .count();
    assert_eq!(left, 2, "the day entries of the kept and the late batch are left");
    log.commit_flush(11).expect("commit");
    assert_eq!(log.expire_batch_ids(day(110), 11, u64::MAX).expect("expire"), 1, "late");
}

#[test]
fn many_ids_expire_in_chunks_and_leave_no_day_entry_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = DurableLog::open(dir.path()).expect("open");
    {
        let db = log.db().expect("db");
        let (ids, days) = (cf(&db, CF_BATCH_IDS).expect("cf"), cf(&db, CF_BATCH_DAYS).expect("cf"));
        let mut wb = WriteBatch::default();
        for i in 0..45_000u64 {
            let id = format!("bulk-{i:05}");
            wb.put_cf(ids, &id, [0; 44]);
            // One batch in the middle is not flushed yet.
            let seq = if i == 20_000 { 9u64 } else { 1 };
            wb.put_cf(days, batch_day_key(5 + (i % 3) as u32, &id), seq.to_be_bytes());
        }
        db.write(wb).expect("write");
    }
    log.commit_flush(1).expect("commit");
    assert_eq!(log.expire_batch_ids(day(10), 1, u64::MAX).expect("expire"), 44_999);
    let db = log.db().expect("db");
    let count = |name| db.iterator_cf(cf(&db, name).expect("cf"), IteratorMode::Start).count();
    assert_eq!((count(CF_BATCH_IDS), count(CF_BATCH_DAYS)), (1, 1), "the unflushed batch's id and entry");
}

#[test]
fn entries_and_digests_are_those_of_the_stored_message() {
    let mut b = batch("b1", 5);
    b.records[2].domain = "api.example.com".into();
    // The digest as it was first defined (stored digests must still match).
    let mut h = Sha256::new();
    let mut d = b.device.clone().expect("device");
    d.consent.clear();
    h.update(d.encode_to_vec());
    for r in &b.records {
        h.update(r.encode_to_vec());
    }
    let want: [u8; 32] = h.finalize().into();
    for (agent_id, at) in [("agent-1", 1_700_000_000_123), ("", 0), ("a", -5)] {
        let stored = StoredBatch { agent_id: agent_id.into(), received_at_ms: at, batch: Some(b.clone()) };
        let encoded = encode_entry_of(agent_id, at, &b);
        assert_eq!(encoded.entry, encode_entry(&stored), "{agent_id:?} {at}");
        assert_eq!(encoded.digest, want, "{agent_id:?} {at}");
        assert_eq!(encoded.batch_bytes, b.encoded_len());
    }
}

#[test]
fn corrupt_entries_are_detected() {
    let stored = StoredBatch { agent_id: "a".into(), received_at_ms: 1, batch: Some(batch("x", 1)) };
    let mut bytes = encode_entry(&stored);
    assert_eq!(decode_entry(&bytes).expect("decodes"), stored);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert!(matches!(decode_entry(&bytes), Err(Error::Corrupt(_))));
    assert!(matches!(decode_entry(&[]), Err(Error::Corrupt(_))));
}

/// `message` sealed with `version` and a valid checksum, uncompressed.
fn raw_entry(version: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![version];
    out.extend_from_slice(&crc32fast::hash(message).to_le_bytes());
    out.extend_from_slice(message);
    out
}

#[test]
fn the_wal_stays_near_its_limit_and_nothing_is_lost() {
    // Incompressible records, 6 MiB in all, against a 1 MiB limit.
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 1u64 << 20;
    let batches: Vec<ReportBatch> = (0..48)
        .map(|i| {
            let mut b = batch(&format!("b{i}"), 64);
            for r in &mut b.records {
                r.domain = hex::encode(rand::random::<[u8; 1024]>());
            }
            b
        })
        .collect();
    {
        let log = DurableLog::open_with(dir.path(), &DurableLog::options_with(limit)).expect("open");
        for b in &batches {
            log.append("agent", b, 1).expect("append");
        }
        // Flushes run in the background: the old files go shortly after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // In use: about the limit; beside them, files kept for reuse (each
        // one of the files once in use).
        let most = (3 + RECYCLED_WAL_FILES as u64) * limit;
        while log.wal_bytes() > most && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(log.wal_bytes() <= most, "{} bytes of WAL", log.wal_bytes());
        assert!(log.wal_bytes() > 0);
    }
    let log = DurableLog::open(dir.path()).expect("reopen");
    let (_, tail) = log.tail().expect("tail");
    assert_eq!(tail.len(), batches.len());
    for (stored, sent) in tail.iter().zip(&batches) {
        assert_eq!(stored.batch.as_ref(), Some(sent));
    }
}

#[test]
fn entries_are_compressed_and_earlier_plain_entries_still_read() {
    let mut b = batch("b1", 1000);
    for r in &mut b.records {
        r.domain = "telemetry.vendor.example.com".into();
        r.dst_ip = "203.0.113.7".into();
    }
    let stored = StoredBatch { agent_id: "agent-1".into(), received_at_ms: 5, batch: Some(b.clone()) };
    let entry = encode_entry(&stored);
    assert_eq!(entry[0], ENTRY_VERSION);
    assert!(
        entry.len() * 4 < stored.encoded_len(),
        "{} bytes for a {}-byte message",
        entry.len(),
        stored.encoded_len()
    );
    assert_eq!(decode_entry(&entry).expect("compressed"), stored);

    // A log written by an earlier release holds plain entries: they are
    // read, from the log itself too, and flushed like new ones.
    let plain = raw_entry(ENTRY_VERSION_PLAIN, &stored.encode_to_vec());
    assert_eq!(decode_entry(&plain).expect("plain"), stored);
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = DurableLog::open(dir.path()).expect("open");
        log.db()
            .expect("db")
            .put_cf(cf(&log.db().expect("db"), CF_BATCHES).expect("cf"), 1u64.to_be_bytes(), &plain)
            .expect("put");
    }
    let log = DurableLog::open(dir.path()).expect("reopen");
    log.append("agent-2", &batch("b2", 3), 6).expect("append");
    let (_, tail) = log.tail().expect("tail");
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0], stored);
    assert_eq!(tail[1].batch.as_ref().map(|b| b.batch_id.as_str()), Some("b2"));
}

#[test]
fn hostile_compressed_entries_are_corrupt_not_a_panic_or_a_huge_allocation() {
    let stored = StoredBatch { agent_id: "a".into(), received_at_ms: 1, batch: Some(batch("x", 10)) };
    let entry = encode_entry(&stored);
    let body = &entry[ENTRY_HEADER..];
    // A stated length of 4 GiB on a few bytes: refused before allocating.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&body[4..]);
    // Truncated, garbage after a plausible length, no length at all.
    let truncated = body[..body.len() / 2].to_vec();
    let mut garbage = body[..4].to_vec();
    garbage.extend_from_slice(&[0xff; 40]);
    for (what, message) in [("huge", huge), ("truncated", truncated), ("garbage", garbage), ("short", vec![1, 2])] {
        let e = decode_entry(&raw_entry(ENTRY_VERSION, &message)).expect_err(what);
        assert!(matches!(e, Error::Corrupt(_)), "{what}: {e}");
    }
    let e = decode_entry(&raw_entry(9, b"x")).expect_err("unknown format");
    assert!(e.to_string().contains("format 9"), "{e}");
}

#[test]
fn sql_tokens_expire_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = [7u8; 32];
    {
        let log = DurableLog::open(dir.path()).expect("open");
        log.put_sql_token(&hash, "alice", 100).expect("put");
    }
    let log = DurableLog::open(dir.path()).expect("reopen");
    assert_eq!(log.sql_token(&hash, 100).expect("get"), Some("alice".to_string()));
    assert_eq!(log.sql_token(&hash, 101).expect("expired"), None);
    assert_eq!(log.sql_token(&[8u8; 32], 1).expect("unknown"), None);

    log.put_sql_token(&[9u8; 32], "bob", 200).expect("put");
    let listed = log.sql_tokens().expect("list");
    assert_eq!(listed, vec![(hash, "alice".to_string(), 100), ([9u8; 32], "bob".to_string(), 200)]);
    log.delete_sql_tokens(&[hash]).expect("delete");
    drop(log);
    let log = DurableLog::open(dir.path()).expect("reopen");
    assert_eq!(log.sql_token(&hash, 1).expect("revoked"), None);
    assert_eq!(log.sql_token(&[9u8; 32], 1).expect("kept"), Some("bob".to_string()));
}

/// Agents enrolled before the log kept their enrollment time and version
/// (a bare token hash, a bare revocation) still authenticate and list.
#[test]
fn agents_of_older_logs_and_new_ones_list_and_authenticate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = DurableLog::open(dir.path()).expect("open");
    {
        let db = log.db().expect("db");
        let agents = super::cf(&db, super::CF_AGENTS).expect("cf");
        db.put_cf(agents, "old", [7u8; 32]).expect("put");
        db.put_cf(agents, "old-revoked", super::REVOKED).expect("put");
    }
    log.put_agent("new", &[9u8; 32], 1_790_000_000, "0.2.0").expect("put");
    assert_eq!(log.agent_token_hash("old").expect("read"), AgentToken::Hash(vec![7; 32]));
    assert_eq!(log.agent_token_hash("new").expect("read"), AgentToken::Hash(vec![9; 32]));
    assert_eq!(log.agent_token_hash("old-revoked").expect("read"), AgentToken::Revoked);
    assert!(log.revoke_agent("new").expect("revoke"));
    assert_eq!(log.agent_token_hash("new").expect("read"), AgentToken::Revoked);
    let listed: Vec<(String, bool, Option<i64>, String)> =
        log.agents().expect("list").into_iter().map(|a| (a.agent_id, a.revoked, a.enrolled_at_s, a.version)).collect();
    assert_eq!(
        listed,
        [
            ("new".into(), true, Some(1_790_000_000), "0.2.0".into()),
            ("old".into(), false, None, String::new()),
            ("old-revoked".into(), true, None, String::new()),
        ]
    );
}
