//! The font of plot text.
//!
//! plotters' `ttf` feature finds system fonts through fontconfig and freetype (C libraries
//! to link); grdr uses its pure-Rust `ab_glyph` feature instead, which knows no font until
//! one is registered. We register a TTF file found at run time: `--font FILE`, else DejaVu
//! Sans where the common distributions put it (Debian/Ubuntu package `fonts-dejavu-core`,
//! installed by `launcher/setup`).
//!
//! Without a font there are no plots at all, SVG included: plotters measures every label
//! with the font to lay out the chart, whichever backend draws it. So a missing font is
//! an error that says how to get one, not a degraded output.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::style::FontStyle;

use crate::error::{Error, Result};

/// Where DejaVu Sans lives: Debian/Ubuntu, Fedora, older RHEL/CentOS, Arch, openSUSE.
const CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
];

/// The family name every text style of the plots uses (plotters' default for labels).
pub const FAMILY: &str = "sans-serif";

/// Registers the plot font once per process and returns the file it came from.
pub fn ensure_registered(explicit: Option<&Path>) -> Result<PathBuf> {
    static REGISTERED: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = REGISTERED.get() {
        return Ok(path.clone());
    }
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| {
            Error::usage(
                "--font",
                format!(
                    "no font for plot text (looked for DejaVu Sans at {}): install Debian's `fonts-dejavu-core` \
                     (apt-get install fonts-dejavu-core), pass --font FILE.ttf, or --no-plots",
                    CANDIDATES.join(", ")
                ),
            )
        })?,
    };
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, "cannot read the plot font", e))?;
    // plotters keeps fonts for the whole process (`&'static`); one font, read once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| Error::usage("--font", format!("{} is not a TrueType/OpenType font", path.display())))?;
    Ok(REGISTERED.get_or_init(|| path).clone())
}
