//! Statements: how each read and buffered write of the model becomes SQL.
//!
//! Owns the SQL text and the FoundationDB semantics that SQL lacks (atomic
//! add, versionstamp substitution). Runs only on a blocking thread inside an
//! open SQLite transaction; it must never begin or end one itself.

use rusqlite::{Connection, OptionalExtension, params};

use super::map_err;
use crate::backend::{KeyValue, Mutation, RangeChunk, RangeRequest};
use crate::error::Result;
use crate::transaction::fill_placeholder;

pub(crate) fn get(conn: &Connection, key: &[u8]) -> Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")
        .map_err(map_err)?
        .query_row(params![key], |row| row.get(0))
        .optional()
        .map_err(map_err)
}

pub(crate) fn get_range(conn: &Connection, request: &RangeRequest) -> Result<RangeChunk> {
    let sql = if request.reverse {
        "SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k DESC LIMIT ?3"
    } else {
        "SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k ASC LIMIT ?3"
    };
    // One extra row tells whether more remain without a second query.
    let fetch: i64 = if request.limit == 0 {
        -1
    } else {
        i64::try_from(request.limit).unwrap_or(i64::MAX - 1) + 1
    };
    let mut stmt = conn.prepare_cached(sql).map_err(map_err)?;
    let mut rows = stmt
        .query(params![request.begin, request.end, fetch])
        .map_err(map_err)?;
    let mut kvs = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next().map_err(map_err)? {
        if request.limit != 0 && kvs.len() == request.limit {
            more = true;
            break;
        }
        kvs.push(KeyValue {
            key: row.get(0).map_err(map_err)?,
            value: row.get(1).map_err(map_err)?,
        });
    }
    Ok(RangeChunk { kvs, more })
}

fn set(conn: &Connection, key: &[u8], value: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
    )
    .map_err(map_err)?
    .execute(params![key, value])
    .map_err(map_err)?;
    Ok(())
}

/// Applies buffered writes in order. Versionstamped writes need the commit's
/// stamp: without one (a flush before a read) they are returned, to be
/// applied at commit; FoundationDB makes such keys unreadable in the writing
/// transaction too.
pub(crate) fn apply(
    conn: &Connection,
    mutations: &[Mutation],
    stamp: Option<&[u8; 10]>,
) -> Result<Vec<Mutation>> {
    let mut deferred = Vec::new();
    for mutation in mutations {
        match mutation {
            Mutation::Set { key, value } => set(conn, key, value)?,
            Mutation::Clear { key } => {
                conn.prepare_cached("DELETE FROM kv WHERE k = ?1")
                    .map_err(map_err)?
                    .execute(params![key])
                    .map_err(map_err)?;
            }
            Mutation::ClearRange { begin, end } => {
                conn.prepare_cached("DELETE FROM kv WHERE k >= ?1 AND k < ?2")
                    .map_err(map_err)?
                    .execute(params![begin, end])
                    .map_err(map_err)?;
            }
            Mutation::Add { key, param } => {
                let current = get(conn, key)?;
                set(conn, key, &add_le(current.as_deref(), param))?;
            }
            Mutation::SetVersionstampedKey { key, value } => match stamp {
                Some(stamp) => set(conn, &fill_placeholder(key, stamp)?, value)?,
                None => deferred.push(mutation.clone()),
            },
            Mutation::SetVersionstampedValue { key, value } => match stamp {
                Some(stamp) => set(conn, key, &fill_placeholder(value, stamp)?)?,
                None => deferred.push(mutation.clone()),
            },
        }
    }
    Ok(deferred)
}

/// Takes the next commit sequence number and turns it into a versionstamp:
/// eight bytes of commit version, big-endian, then a two-byte batch order
/// (always zero here: one commit per version).
pub(crate) fn next_versionstamp(conn: &Connection) -> Result<[u8; 10]> {
    let seq: i64 = conn
        .prepare_cached("UPDATE meta SET n = n + 1 WHERE name = 'commit_seq' RETURNING n")
        .map_err(map_err)?
        .query_row([], |row| row.get(0))
        .map_err(map_err)?;
    let mut stamp = [0u8; 10];
    stamp[..8].copy_from_slice(&(seq as u64).to_be_bytes());
    Ok(stamp)
}

/// FoundationDB's ADD: little-endian, the result as wide as the addend, a
/// missing or shorter value padded with zeros, overflow wrapping.
pub(crate) fn add_le(current: Option<&[u8]>, param: &[u8]) -> Vec<u8> {
    let current = current.unwrap_or(&[]);
    let mut out = Vec::with_capacity(param.len());
    let mut carry = 0u16;
    for (i, p) in param.iter().enumerate() {
        let c = current.get(i).copied().unwrap_or(0);
        let sum = u16::from(c) + u16::from(*p) + carry;
        out.push((sum & 0xff) as u8);
        carry = sum >> 8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::add_le;

    #[test]
    fn add_carries_across_bytes_and_wraps_at_the_addend_width() {
        assert_eq!(add_le(Some(&[0xff, 0x00]), &[0x01, 0x00]), vec![0x00, 0x01]);
        assert_eq!(add_le(Some(&[0xff, 0xff]), &[0x01, 0x00]), vec![0x00, 0x00]);
        assert_eq!(
            add_le(None, &5i64.to_le_bytes()),
            5i64.to_le_bytes().to_vec()
        );
        let minus_one = (-1i64).to_le_bytes();
        assert_eq!(
            add_le(Some(&7i64.to_le_bytes()), &minus_one),
            6i64.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn add_truncates_a_longer_stored_value_to_the_addend_width() {
        assert_eq!(add_le(Some(&[1, 2, 3, 4]), &[1, 0]), vec![2, 2]);
    }
}
