//! The HTML reports' common parts: one self-contained page (inline CSS, a few lines of
//! inline script for sorting, figures as inline SVG), with a Content-Security-Policy that
//! lets the page load nothing from anywhere: it reads the same offline on a cluster node,
//! on a laptop, or as an attachment. Links to the run files are relative, so they work
//! wherever the directory is copied whole. `html_sweep.rs` and `html_run.rs` fill it.
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use super::plot::{self, Figure};
use crate::error::Result;

/// The report's file name inside the output directory.
pub const HTML_FILE: &str = "report.html";

/// Nothing may be fetched: no scripts, styles, images or fonts from outside the page.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #555; margin-top: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th[data-sort] { cursor: pointer; user-select: none; background: #f4f4f4; position: sticky; top: 0; }
th[data-sort]::after { content: " \2195"; color: #aaa; }
th[aria-sort="ascending"]::after { content: " \2191"; color: #222; }
th[aria-sort="descending"]::after { content: " \2193"; color: #222; }
tbody tr:hover { background: #f6f9ff; }
.state-done { color: #05753f; } .state-failed { color: #b00020; font-weight: bold; }
.state-running, .state-submitted { color: #0b5cad; } .state-preempted { color: #a15c00; }
.null { color: #aaa; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 1rem; }
figure.plot { margin: 0; break-inside: avoid; }
figure.plot svg { width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.75rem; overflow-x: auto; font-size: 0.8rem; }
a { color: #0b5cad; }
@media print {
  body { max-width: none; margin: 0; }
  th[data-sort] { position: static; } th[data-sort]::after { content: ""; }
  .scroll { overflow: visible; } a { color: inherit; text-decoration: none; }
}
"#;

/// Click a header to sort by it (numbers by `data-value`, text alphabetically; nulls last),
/// again to reverse.
const SORT_SCRIPT: &str = r#"
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, col) {
    if (!th.dataset.sort) return;
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (row) {
        var cell = row.cells[col], v = cell.dataset.value;
        if (v === undefined || v === "") return null;
        return th.dataset.sort === "number" ? parseFloat(v) : v.toLowerCase();
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"#;

/// Text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page being written: sections appended in order, then [`Page::finish`].
pub struct Page {
    body: String,
}

impl Page {
    pub fn new(title: &str, meta: &str) -> Page {
        Page { body: format!("<h1>{}</h1>\n<p class=\"meta\">{}</p>\n", escape(title), meta) }
    }

    pub fn heading(&mut self, text: &str) {
        let _ = writeln!(self.body, "<h2>{}</h2>", escape(text));
    }

    /// Raw HTML (callers escape what they put in).
    pub fn raw(&mut self, html: &str) {
        self.body.push_str(html);
        self.body.push('\n');
    }

    pub fn preformatted(&mut self, text: &str) {
        let _ = writeln!(self.body, "<pre>{}</pre>", escape(text));
    }

    /// Starts / ends a grid of figures (two side by side on a laptop screen).
    pub fn figures_begin(&mut self) {
        self.body.push_str("<div class=\"figures\">\n");
    }

    pub fn figures_end(&mut self) {
        self.body.push_str("</div>\n");
    }

    /// A figure drawn as inline SVG, tagged with its axis titles (what a reader, or the
    /// browser test, finds it by).
    pub fn figure(&mut self, fig: &Figure) -> Result<()> {
        let svg = plot::svg_string(fig)?;
        let _ = writeln!(
            self.body,
            "<figure class=\"plot\" id=\"fig-{}\" aria-label=\"{}\" data-x-label=\"{}\" data-y-label=\"{}\">\n{}\n</figure>",
            escape(&fig.stem),
            escape(&fig.title),
            escape(&plot::x_title(fig)),
            escape(&fig.metric),
            svg.trim(),
        );
        Ok(())
    }

    /// The whole document.
    pub fn finish(self, title: &str) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{}\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n",
            escape(title),
            self.body
        )
    }
}

/// One table cell: its shown text and the value it sorts by.
pub struct Cell {
    pub html: String,
    pub sort: Option<String>,
    pub numeric: bool,
}

impl Cell {
    pub fn text(text: &str) -> Cell {
        Cell { html: escape(text), sort: Some(text.to_string()), numeric: false }
    }

    pub fn number(v: Option<f64>, shown: impl Fn(f64) -> String) -> Cell {
        match v {
            Some(x) if x.is_finite() => Cell { html: escape(&shown(x)), sort: Some(x.to_string()), numeric: true },
            _ => Cell::null(),
        }
    }

    pub fn null() -> Cell {
        Cell { html: "<span class=\"null\">–</span>".into(), sort: None, numeric: true }
    }
}

/// A number as a table shows it: integers whole, others to 4 significant digits.
pub fn short_number(x: f64) -> String {
    let shortest = format!("{x}");
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else if shortest.len() <= 6 {
        // What a config says (0.001, 0.25): shown as written.
        shortest
    } else if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) {
        format!("{x:.3e}")
    } else {
        let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{x:.digits$}")
    }
}

/// A sortable table: `heads` are (title, sorts as number), `rows` their cells;
/// `row_attrs` go on each `<tr>` (e.g. `data-point`).
pub fn table(id: &str, heads: &[(String, bool)], rows: &[(String, Vec<Cell>)]) -> String {
    let mut out = format!("<div class=\"scroll\"><table class=\"sortable\" id=\"{}\">\n<thead><tr>", escape(id));
    for (title, numeric) in heads {
        let kind = if *numeric { "number" } else { "text" };
        let _ = write!(out, "<th data-sort=\"{kind}\">{}</th>", escape(title));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (attrs, cells) in rows {
        let _ = write!(out, "<tr{attrs}>");
        for c in cells {
            let class = if c.numeric { " class=\"num\"" } else { "" };
            let value = c.sort.as_ref().map(|v| format!(" data-value=\"{}\"", escape(v))).unwrap_or_default();
            let _ = write!(out, "<td{class}{value}>{}</td>", c.html);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// `target` relative to the directory `from` (both made absolute), for links that survive
/// copying the whole tree elsewhere.
pub fn relative(from: &Path, target: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (from, target) = (abs(from), abs(target));
    let f: Vec<Component<'_>> = from.components().filter(|c| *c != Component::CurDir).collect();
    let t: Vec<Component<'_>> = target.components().filter(|c| *c != Component::CurDir).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Links to those of `files` (paths under `base`) that exist, relative to `out_dir`.
pub fn file_links(out_dir: &Path, base: &Path, files: &[&str]) -> String {
    files
        .iter()
        .filter(|f| base.join(f).exists())
        .map(|f| {
            let href = relative(out_dir, &base.join(f));
            format!("<a href=\"{}\">{}</a>", escape(&href.to_string_lossy()), escape(f))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Writes the page to `out_dir/report.html` atomically.
pub fn write(out_dir: &Path, html: &str) -> Result<PathBuf> {
    let path = out_dir.join(HTML_FILE);
    crate::atomic::write_file(&path, |w| std::io::Write::write_all(w, html.as_bytes()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_relative_links_and_numbers() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(
            relative(Path::new("/s/report"), Path::new("/s/points/p0/run/metrics.jsonl")),
            Path::new("../points/p0/run/metrics.jsonl")
        );
        assert_eq!(relative(Path::new("/s"), Path::new("/s/a")), Path::new("a"));
        assert_eq!(short_number(16.0), "16");
        assert_eq!(short_number(0.31234567), "0.3123");
        assert_eq!(short_number(61.25), "61.25");
        assert_eq!(short_number(1.5e-5), "1.500e-5");
        assert_eq!(short_number(0.001), "0.001");
    }
}
