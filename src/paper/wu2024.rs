//! Wu et al. (SIGIR 2024), "Generative Retrieval as Multi-Vector Dense Retrieval": the rows
//! of Tables 5–7 as grdr runs (configs under `configs/runs/`), and the paper's numbers on
//! NQ320k (R@1, R@10, MRR@10; `None` where the paper gives none) to print beside ours.
use super::{Docids, Paper, Row, Setting, Table, TableRow};

const fn row(name: &'static str, docids: Option<Docids>, fm_index: bool, rerank: bool) -> Row {
    Row { name, docids, fm_index, rerank }
}

const fn entry(row: &'static str, label: &'static str, setting: Setting, paper: [Option<f64>; 3]) -> TableRow {
    TableRow { row, label, setting, paper }
}

use Setting::{EndToEnd, Rerank};

pub fn paper() -> Paper {
    Paper {
        name: "wu2024",
        rows: vec![
            row("bm25", None, false, false),
            row("dr-minilm-scifact", None, false, false),
            row("colbert-minilm-scifact", None, false, true),
            row("colbert-d2q-minilm-scifact", None, false, true),
            row("colbert-pairwise-minilm-scifact", None, false, false),
            row("dsi-atomic-scifact", Some(Docids::Atomic), false, true),
            row("dsi-semantic-scifact", Some(Docids::Semantic), false, false),
            row("dsi-pawa-semantic-scifact", Some(Docids::Semantic), false, false),
            row("seal-scifact", Some(Docids::Ngram), true, true),
            row("genre-title-scifact", Some(Docids::Title), false, false),
            row("genre-np-scifact", Some(Docids::Title), false, false),
        ],
        tables: vec![
            Table {
                name: "table5",
                title: "Table 5: MVDR and GR in the rerank setting (BM25 top-100, no gold added)",
                rows: vec![
                    entry("colbert-minilm-scifact", "MVDR (q→d)", Rerank, [Some(61.3), Some(91.9), Some(72.0)]),
                    entry("colbert-d2q-minilm-scifact", "MVDR (q←d)", Rerank, [Some(53.2), Some(90.1), Some(65.7)]),
                    entry("seal-scifact", "GR (T5-SEAL)", Rerank, [Some(47.4), Some(87.0), Some(60.5)]),
                    entry("dsi-atomic-scifact", "GR (DSI atomic)", Rerank, [None, None, None]),
                ],
            },
            Table {
                name: "table6",
                title: "Table 6: GR document encodings, end to end",
                rows: vec![
                    entry(
                        "colbert-minilm-scifact",
                        "T5-ColBERT (ours: MiniLM ColBERT)",
                        EndToEnd,
                        [Some(61.1), Some(88.4), None],
                    ),
                    entry("dsi-semantic-scifact", "DSI (semantic)", EndToEnd, [Some(55.2), Some(67.4), None]),
                    entry("dsi-pawa-semantic-scifact", "DSI-PAWA", EndToEnd, [Some(60.2), Some(80.2), None]),
                    entry("seal-scifact", "T5-SEAL", EndToEnd, [Some(44.7), Some(75.5), None]),
                    entry("genre-title-scifact", "T5-GENRE", EndToEnd, [Some(53.7), Some(64.7), None]),
                    entry("genre-np-scifact", "T5-GENRE-NP", EndToEnd, [Some(62.2), Some(78.8), None]),
                ],
            },
            Table {
                name: "table7",
                title: "Table 7: ColBERT with in-batch negatives vs ColBERTv1's pairwise loss, end to end",
                rows: vec![
                    entry("bm25", "BM25", EndToEnd, [Some(37.6), Some(69.5), Some(47.8)]),
                    entry(
                        "dr-minilm-scifact",
                        "single-vector DR (Sentence-T5 row; ours: MiniLM)",
                        EndToEnd,
                        [Some(53.6), Some(83.0), None],
                    ),
                    entry(
                        "colbert-pairwise-minilm-scifact",
                        "ColBERT, pairwise (official ColBERTv1)",
                        EndToEnd,
                        [Some(57.5), Some(84.3), Some(66.8)],
                    ),
                    entry(
                        "colbert-minilm-scifact",
                        "ColBERT, in-batch negatives",
                        EndToEnd,
                        [Some(58.4), Some(86.6), Some(68.0)],
                    ),
                ],
            },
        ],
    }
}
