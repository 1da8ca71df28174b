//! TREC run files and relevance judgements (qrels): the hand-off format between
//! `grdr eval`, trec_eval/pytrec_eval and any other IR tool.
//!
//! Readers are strict on purpose: a malformed line, a duplicate judgement or a duplicate
//! document changes scores silently in other tools (trec_eval aborts on some, BEIR's
//! loader keeps the last value), so here each one is an [`Error::Input`] naming the file,
//! the 1-based line and the field. Ids may not contain whitespace, because a TREC run
//! line is whitespace-separated and such an id could not be written back.
//!
//! Qrels come in two layouts, told apart by the first line:
//! - BEIR TSV: header `query-id<TAB>corpus-id<TAB>score`, then exactly 3 tab-separated
//!   fields per line (BEIR ships these with CRLF line ends, which are stripped);
//! - TREC: `qid iter docno rel`, 4 whitespace-separated fields, no header (`iter` ignored).
//!
//! Runs are the 6-column TREC format `qid Q0 docno rank score tag`. The rank column is
//! checked to be an integer but otherwise ignored, as trec_eval ignores it: the order
//! that counts is the one `eval::metrics` derives from the scores.
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Location, Result};

/// query id -> (doc id -> graded relevance). A judgement of 0 (or below) is non-relevant
/// but still makes its query part of the evaluated query set.
pub type Qrels = BTreeMap<String, HashMap<String, i32>>;

/// query id -> (doc id, score) in the order read or produced (not necessarily sorted).
pub type Run = BTreeMap<String, Vec<(String, f64)>>;

const BEIR_HEADER: [&str; 3] = ["query-id", "corpus-id", "score"];
const TREC_QRELS_FIELDS: [&str; 4] = ["qid", "iter", "docno", "rel"];
const RUN_FIELDS: [&str; 6] = ["qid", "Q0", "docno", "rank", "score", "tag"];

/// Reads a whole text file, refusing an empty one and naming the first non-UTF-8 line.
fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::input(path, Location::File, "file", "empty file"));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        Error::input(path, Location::Line(line), "encoding", "line is not valid UTF-8")
    })
}

/// (1-based line number, line without its `\n` or `\r\n`).
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

/// An id field: non-empty and free of whitespace (so it survives a TREC run line).
pub(crate) fn check_id<'a>(path: &Path, line: usize, field: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(Error::input(path, Location::Line(line), field, "empty id"));
    }
    if value.chars().any(char::is_whitespace) {
        let msg = format!("id `{value}` contains whitespace");
        return Err(Error::input(path, Location::Line(line), field, msg));
    }
    Ok(value)
}

/// Exactly `N` whitespace-separated fields, or the number found (no allocation: runs
/// have millions of lines).
fn fields<const N: usize>(line: &str) -> std::result::Result<[&str; N], usize> {
    let mut out = [""; N];
    let mut it = line.split_ascii_whitespace();
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = it.next().ok_or(i)?;
    }
    match it.count() {
        0 => Ok(out),
        extra => Err(N + extra),
    }
}

fn wrong_columns(path: &Path, line: usize, expected: &str, found: usize) -> Error {
    let msg = format!("expected {expected}, found {found} field(s)");
    Error::input(path, Location::Line(line), "columns", msg)
}

/// One judgement as read, with its line (for errors found later, e.g. unknown ids).
#[derive(Debug, Clone, PartialEq)]
pub struct QrelRow {
    pub line: usize,
    pub query_id: String,
    pub doc_id: String,
    pub relevance: i32,
}

/// Judgements in file order and the names of the (query, doc, relevance) fields in the
/// file's layout, so later errors can name the field as the file does.
pub struct QrelRows {
    pub rows: Vec<QrelRow>,
    pub field_names: [&'static str; 3],
}

/// Reads BEIR TSV or TREC qrels (see the module docs for how the layout is detected),
/// refusing malformed lines and duplicate judgements.
pub fn read_qrels_rows(path: &Path) -> Result<QrelRows> {
    let text = read_text(path)?;
    let mut lines = numbered_lines(&text).peekable();
    let Some(&(_, first)) = lines.peek() else {
        return Err(Error::input(path, Location::File, "file", "empty file"));
    };
    let beir = first.contains('\t') && first.split('\t').count() == 3;
    if beir {
        if first.split('\t').ne(BEIR_HEADER) {
            let msg = format!("expected the BEIR header `query-id<TAB>corpus-id<TAB>score`, found `{first}`");
            return Err(Error::input(path, Location::Line(1), "header", msg));
        }
        lines.next();
    } else if first.split_ascii_whitespace().count() != 4 {
        let msg = format!(
            "neither a BEIR qrels header (`query-id<TAB>corpus-id<TAB>score`) nor a \
             4-column TREC qrels line (`qid iter docno rel`): `{first}`"
        );
        return Err(Error::input(path, Location::Line(1), "header", msg));
    }
    let names: [&'static str; 3] =
        if beir { BEIR_HEADER } else { [TREC_QRELS_FIELDS[0], TREC_QRELS_FIELDS[2], TREC_QRELS_FIELDS[3]] };

    let mut rows = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for (n, line) in lines {
        let (qid, docno, rel) = if beir {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != 3 {
                return Err(wrong_columns(path, n, "3 tab-separated fields", fields.len()));
            }
            (fields[0], fields[1], fields[2])
        } else {
            let [qid, _, docno, rel] = fields::<4>(line).map_err(|found| {
                let expected = "4 whitespace-separated fields `qid iter docno rel`";
                wrong_columns(path, n, expected, found)
            })?;
            (qid, docno, rel)
        };
        let qid = check_id(path, n, names[0], qid)?;
        let docno = check_id(path, n, names[1], docno)?;
        let rel: i32 = rel.parse().map_err(|_| {
            let msg = format!("relevance `{rel}` is not an integer");
            Error::input(path, Location::Line(n), names[2], msg)
        })?;
        if let Some(first) = seen.insert((qid, docno), n) {
            let msg = format!("query `{qid}` judges doc `{docno}` again (first at line {first})");
            return Err(Error::input(path, Location::Line(n), names[1], msg));
        }
        rows.push(QrelRow { line: n, query_id: qid.to_owned(), doc_id: docno.to_owned(), relevance: rel });
    }
    if rows.is_empty() {
        return Err(Error::input(path, Location::File, "file", "header but no judgements"));
    }
    Ok(QrelRows { rows, field_names: names })
}

/// Reads BEIR TSV or TREC qrels into query id -> (doc id -> relevance).
pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let mut qrels = Qrels::new();
    for r in read_qrels_rows(path)?.rows {
        qrels.entry(r.query_id).or_default().insert(r.doc_id, r.relevance);
    }
    Ok(qrels)
}

/// Reads a 6-column TREC run. Documents keep their file order within each query.
pub fn read_run(path: &Path) -> Result<Run> {
    let text = read_text(path)?;
    // Runs are grouped by query in practice; the index makes any order work.
    let mut index: HashMap<&str, usize> = HashMap::new();
    // Per query: its id, its (docno, score) list, and each docno's position in that list.
    type QueryHits<'t> = (&'t str, Vec<(String, f64)>, HashMap<&'t str, usize>);
    let mut queries: Vec<QueryHits> = Vec::new();
    for (n, line) in numbered_lines(&text) {
        let fields = fields::<6>(line).map_err(|found| {
            let expected = "6 whitespace-separated fields `qid Q0 docno rank score tag`";
            wrong_columns(path, n, expected, found)
        })?;
        let qid = check_id(path, n, RUN_FIELDS[0], fields[0])?;
        let docno = check_id(path, n, RUN_FIELDS[2], fields[2])?;
        if fields[3].parse::<i64>().is_err() {
            let msg = format!("rank `{}` is not an integer", fields[3]);
            return Err(Error::input(path, Location::Line(n), RUN_FIELDS[3], msg));
        }
        let score = fields[4].parse::<f64>().ok().filter(|s| s.is_finite()).ok_or_else(|| {
            let msg = format!("score `{}` is not a finite number", fields[4]);
            Error::input(path, Location::Line(n), RUN_FIELDS[4], msg)
        })?;
        let slot = *index.entry(qid).or_insert_with(|| {
            queries.push((qid, Vec::new(), HashMap::new()));
            queries.len() - 1
        });
        let (_, docs, seen) = &mut queries[slot];
        if let Some(first) = seen.insert(docno, n) {
            let msg = format!("query `{qid}` retrieves doc `{docno}` again (first at line {first})");
            return Err(Error::input(path, Location::Line(n), RUN_FIELDS[2], msg));
        }
        docs.push((docno.to_owned(), score));
    }
    Ok(queries.into_iter().map(|(q, docs, _)| (q.to_owned(), docs)).collect())
}

/// Writes `run` (queries in id order, documents in the order given) atomically.
pub fn write_run(path: &Path, run: &Run, tag: &str) -> Result<()> {
    write_run_rows(path, run.iter().map(|(q, docs)| (q, docs.iter().map(|(d, s)| (d, *s)))), tag)
}

/// Writes ranked rows `(query id, [(doc id, score)] in rank order)` as a TREC run,
/// atomically: ranks start at 1 per query, scores use the shortest decimal form that
/// parses back to the same f64 (so re-reading reproduces the exact ordering and ties).
/// Ids with whitespace and non-finite scores are refused: they would not read back.
pub fn write_run_rows<Q, D, L, I>(path: &Path, rows: I, tag: &str) -> Result<()>
where
    I: IntoIterator<Item = (Q, L)>,
    L: IntoIterator<Item = (D, f64)>,
    Q: AsRef<str>,
    D: AsRef<str>,
{
    if tag.is_empty() || tag.chars().any(char::is_whitespace) {
        return Err(Error::usage("tag", format!("run tag `{tag}` must be one non-empty word")));
    }
    crate::atomic::write_file(path, |w| {
        for (qid, docs) in rows {
            let qid = qid.as_ref();
            check_written_id("query", qid)?;
            for (i, (docno, score)) in docs.into_iter().enumerate() {
                let docno = docno.as_ref();
                check_written_id("doc", docno)?;
                if !score.is_finite() {
                    let msg = format!("query `{qid}` doc `{docno}`: score {score} is not finite");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
                // `{:?}` is Rust's shortest round-trip form (`0.1`, `1e-7`, `3.0`).
                writeln!(w, "{qid} Q0 {docno} {} {score:?} {tag}", i + 1)?;
            }
        }
        Ok(())
    })
}

fn check_written_id(kind: &str, id: &str) -> io::Result<()> {
    if id.is_empty() || id.chars().any(char::is_whitespace) {
        let msg = format!("{kind} id `{id}` is empty or contains whitespace");
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("should be refused").to_string()
    }

    #[test]
    fn reads_beir_tsv_with_crlf_and_trec_qrels() {
        let dir = tempfile::tempdir().unwrap();
        let beir = file(&dir, "a.tsv", b"query-id\tcorpus-id\tscore\r\n1\td1\t1\r\n1\td2\t0\r\n");
        let trec = file(&dir, "a.txt", b"1 0 d1 1\n1 0 d2 0\n");
        let a = read_qrels(&beir).unwrap();
        assert_eq!(a, read_qrels(&trec).unwrap());
        assert_eq!(a["1"]["d1"], 1);
        assert_eq!(a["1"]["d2"], 0);
    }

    #[test]
    fn refuses_bad_qrels_naming_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 7] = [
            (b"", "empty file"),
            (b"qid\tdocid\tscore\n1\td\t1\n", ":line 1: field `header`"),
            (b"query-id\tcorpus-id\tscore\n1\td\n", ":line 2: field `columns`"),
            (b"query-id\tcorpus-id\tscore\n1\td\t1.5\n", ":line 2: field `score`"),
            (b"1 0 d 1\n1 0 d 2\n", ":line 2: field `docno`: query `1` judges doc `d` again"),
            (b"1 0 d 1\n1 0 e\n", ":line 2: field `columns`"),
            (b"1 0 d 1\n1 0 \xff 1\n", ":line 2: field `encoding`"),
        ];
        for (i, (bytes, expected)) in cases.iter().enumerate() {
            let path = file(&dir, &format!("q{i}.txt"), bytes);
            let msg = err_text(read_qrels(&path));
            assert!(msg.contains(&format!("q{i}.txt")), "{msg}");
            assert!(msg.contains(expected), "case {i}: {msg}");
        }
    }

    #[test]
    fn run_round_trips_order_and_exact_scores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.trec");
        let mut run = Run::new();
        let scores = [0.1, 1e-7, -0.0, 3.0, 1.0 / 3.0, 12345678.901234567, f64::MIN_POSITIVE];
        let docs: Vec<(String, f64)> = scores.iter().enumerate().map(|(i, &s)| (format!("d{i}"), s)).collect();
        run.insert("q1".into(), docs);
        run.insert("q0".into(), vec![("x".into(), 2.5)]);
        write_run(&path, &run, "grdr").unwrap();
        let back = read_run(&path).unwrap();
        assert_eq!(back.len(), 2);
        for (q, docs) in &run {
            let got = &back[q];
            assert_eq!(got.len(), docs.len());
            for ((d1, s1), (d2, s2)) in docs.iter().zip(got) {
                assert_eq!(d1, d2);
                assert_eq!(s1.to_bits(), s2.to_bits());
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("q0 Q0 x 1 2.5 grdr\nq1 Q0 d0 1 0.1 grdr\nq1 Q0 d1 2 1e-7 grdr\n"));
    }

    #[test]
    fn refuses_bad_runs_and_unwritable_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 6] = [
            (b"\n\n", "empty file"),
            (b"1 Q0 d 1 0.5 t\n1 Q0 e 2 0.4\n", ":line 2: field `columns`"),
            (b"1 Q0 d one 0.5 t\n", ":line 1: field `rank`"),
            (b"1 Q0 d 1 high t\n", ":line 1: field `score`"),
            (b"1 Q0 d 1 nan t\n", ":line 1: field `score`"),
            (b"1 Q0 d 1 0.5 t\n2 Q0 d 1 0.5 t\n1 Q0 d 2 0.4 t\n", ":line 3: field `docno`"),
        ];
        for (i, (bytes, expected)) in cases.iter().enumerate() {
            let path = file(&dir, &format!("r{i}.trec"), bytes);
            let msg = err_text(read_run(&path));
            assert!(msg.contains(&format!("r{i}.trec")) && msg.contains(expected), "{msg}");
        }
        let out = dir.path().join("out.trec");
        let bad_id = [("q 1", vec![("d", 1.0)])];
        assert!(write_run_rows(&out, bad_id, "t").is_err());
        let bad_score = [("q1", vec![("d", f64::NAN)])];
        assert!(write_run_rows(&out, bad_score, "t").is_err());
        assert!(write_run_rows(&out, [("q1", vec![("d", 1.0)])], "two words").is_err());
        assert!(!out.exists());
    }
}
