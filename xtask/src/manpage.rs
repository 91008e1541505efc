//! `lockstep.toml(5)` from docs/config.md: a small Markdown-to-roff converter for the subset
//! of Markdown that file uses (headings, paragraphs, fenced code, bullet lists, tables,
//! inline code, bold, links).
//!
//! Invariants:
//! - No text is dropped: what the converter does not understand is printed as plain text.
//! - Everything printed is escaped for roff (backslashes, leading dots and quotes, hyphens),
//!   so no line of the source can become a roff request.
//! - Tables become tagged paragraphs (the first cell as the tag, the rest joined with "; "),
//!   so the page needs no `tbl` preprocessor.

use anyhow::{bail, Result};

/// The man page of the config file, `lockstep.toml(5)`.
pub fn config_page(markdown: &str, version: &str, epoch: u64) -> Result<String> {
    let date = date_of(epoch);
    let mut out = format!(
        ".TH LOCKSTEP.TOML 5 \"{date}\" \"lockstep {version}\" \"Lockstep Manual\"\n\
         .SH NAME\nlockstep.toml \\- the configuration file of lockstep\n"
    );
    out.push_str(&to_roff(markdown)?);
    out.push_str(".SH SEE ALSO\n\\fBlockstep\\fR(1), \\fBlockstep\\-validate\\fR(1), \\fBlockstep\\-daemon\\fR(1)\n");
    Ok(out)
}

/// The body: every Markdown block as roff. The document's `# title` becomes the DESCRIPTION
/// section's heading.
pub fn to_roff(markdown: &str) -> Result<String> {
    let mut out = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut lines = markdown.lines().peekable();
    let flush = |paragraph: &mut Vec<&str>, out: &mut String| {
        if !paragraph.is_empty() {
            out.push_str(".PP\n");
            out.push_str(&inline(&paragraph.join(" ")));
            out.push('\n');
            paragraph.clear();
        }
    };
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(fence) = trimmed.strip_prefix("```") {
            flush(&mut paragraph, &mut out);
            let _language = fence;
            out.push_str(".PP\n.RS 4\n.nf\n");
            let mut closed = false;
            for code in lines.by_ref() {
                if code.trim_start().starts_with("```") {
                    closed = true;
                    break;
                }
                out.push_str(&escape_line(code));
                out.push('\n');
            }
            if !closed {
                bail!("docs/config.md: a ``` code block is never closed");
            }
            out.push_str(".fi\n.RE\n");
        } else if let Some(title) = heading(trimmed) {
            flush(&mut paragraph, &mut out);
            let (level, text) = title;
            match level {
                1 => out.push_str(".SH DESCRIPTION\n"),
                2 => out.push_str(&format!(
                    ".SH {}\n",
                    escape(&strip_marks(text).to_uppercase())
                )),
                _ => out.push_str(&format!(".SS {}\n", inline(text))),
            }
        } else if trimmed.starts_with('|') {
            flush(&mut paragraph, &mut out);
            let mut rows = vec![trimmed];
            while let Some(next) = lines.peek() {
                if next.trim_start().starts_with('|') {
                    rows.push(next.trim_start());
                    lines.next();
                } else {
                    break;
                }
            }
            out.push_str(&table(&rows));
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            flush(&mut paragraph, &mut out);
            // A bullet's continuation lines are indented.
            let indent = line.len() - trimmed.len();
            let mut text = vec![item];
            while let Some(next) = lines.peek() {
                let next_trimmed = next.trim_start();
                let next_indent = next.len() - next_trimmed.len();
                if !next_trimmed.is_empty()
                    && next_indent > indent
                    && !next_trimmed.starts_with("- ")
                    && !next_trimmed.starts_with('|')
                    && !next_trimmed.starts_with("```")
                {
                    text.push(next_trimmed);
                    lines.next();
                } else {
                    break;
                }
            }
            let depth = indent / 2;
            if depth > 0 {
                out.push_str(".RS 2\n");
            }
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&inline(&text.join(" ")));
            out.push('\n');
            if depth > 0 {
                out.push_str(".RE\n");
            }
        } else if trimmed.is_empty() {
            flush(&mut paragraph, &mut out);
        } else {
            paragraph.push(trimmed);
        }
    }
    flush(&mut paragraph, &mut out);
    Ok(out)
}

/// `(level, text)` of an ATX heading.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if level == 0 || level > 6 {
        return None;
    }
    line[level..]
        .strip_prefix(' ')
        .map(|text| (level, text.trim()))
}

/// A Markdown table as tagged paragraphs: the header row names the columns after the first.
fn table(rows: &[&str]) -> String {
    let cells = |row: &str| -> Vec<String> {
        let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
        split_cells(inner)
            .into_iter()
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut out = String::new();
    let Some((header, body)) = rows.split_first() else {
        return out;
    };
    let names = cells(header);
    for row in body {
        let row = cells(row);
        if row
            .iter()
            .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        {
            continue; // The separator line.
        }
        let Some((tag, rest)) = row.split_first() else {
            continue;
        };
        out.push_str(".TP\n");
        out.push_str(&inline(tag));
        out.push('\n');
        let described: Vec<String> = rest
            .iter()
            .enumerate()
            .filter(|(_, cell)| !cell.is_empty())
            .map(|(i, cell)| match names.get(i + 1) {
                Some(name) if name != "notes" && name != "meaning" => format!("{name}: {cell}"),
                _ => cell.clone(),
            })
            .collect();
        out.push_str(&inline(&described.join("; ")));
        out.push('\n');
    }
    out
}

/// Splits a table row at `|`s that are outside backticks and not escaped (`\|`).
fn split_cells(row: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cell.push('|');
            }
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell)),
            _ => cell.push(c),
        }
    }
    cells.push(cell);
    cells
}

/// Inline Markdown as roff: `code` and **bold** in bold, \[text\](link) as its text, the rest
/// escaped. Returns one output line (roff requests never start it).
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("``") {
            // Double backticks quote text that contains a backtick: `` "`a.b`" ``.
            if let Some(end) = after.find("``") {
                out.push_str("\\fB");
                out.push_str(&escape(after[..end].trim()));
                out.push_str("\\fR");
                rest = &after[end + 2..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('`') {
            if let Some(end) = after.find('`') {
                out.push_str("\\fB");
                out.push_str(&escape(&after[..end]));
                out.push_str("\\fR");
                rest = &after[end + 1..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix("**") {
            if let Some(end) = after.find("**") {
                out.push_str("\\fB");
                out.push_str(&inline(&after[..end]));
                out.push_str("\\fR");
                rest = &after[end + 2..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('[') {
            if let Some(close) = after.find("](") {
                if let Some(end) = after[close + 2..].find(')') {
                    out.push_str(&inline(&after[..close]));
                    rest = &after[close + 2 + end + 1..];
                    continue;
                }
            }
        }
        let next = rest[1..]
            .find(['`', '*', '['])
            .map_or(rest.len(), |i| i + 1);
        out.push_str(&escape(&rest[..next]));
        rest = &rest[next..];
    }
    protect_line_start(out)
}

/// A code line, escaped, kept as it is.
fn escape_line(line: &str) -> String {
    protect_line_start(escape(line))
}

/// `.` or `'` at the start of a line would make a roff request: `\&` defuses it.
fn protect_line_start(line: String) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

/// Escapes text for roff: backslashes, and hyphens as minus signs (what one types).
fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A heading's text without inline marks, for the upper-case section names.
fn strip_marks(text: &str) -> String {
    text.replace(['`', '*'], "")
}

/// `YYYY-MM-DD` of a Unix time (civil-from-days, proleptic Gregorian).
fn date_of(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_blocks_become_roff() {
        let roff = to_roff(
            "# Title\n\nSome `code` and **bold**, a [link](x.md).\n\n## A section\n\n\
             ```toml\n[state]\n.hidden = 1\n```\n\n| key | type | notes |\n|---|---|---|\n\
             | `url` | string | a \\| b `x|y` |\n\n- one\n  two\n- three\n",
        )
        .expect("converts");
        assert!(roff.contains(".SH DESCRIPTION\n"), "{roff}");
        assert!(
            roff.contains("Some \\fBcode\\fR and \\fBbold\\fR, a link."),
            "{roff}"
        );
        assert!(roff.contains(".SH A SECTION\n"), "{roff}");
        assert!(
            roff.contains(".nf\n[state]\n\\&.hidden = 1\n.fi\n"),
            "{roff}"
        );
        assert!(
            roff.contains(".TP\n\\fBurl\\fR\ntype: string; a | b \\fBx|y\\fR\n"),
            "{roff}"
        );
        assert!(
            roff.contains(".IP \\(bu 2\none two\n.IP \\(bu 2\nthree\n"),
            "{roff}"
        );
    }

    #[test]
    fn an_unclosed_code_block_is_an_error() {
        let error = to_roff("text\n```\ncode\n").unwrap_err();
        assert!(error.to_string().contains("never closed"), "{error}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_709_164_800), "2024-02-29");
    }

    #[test]
    fn the_config_reference_renders_without_losing_sections() {
        let markdown = include_str!("../../docs/config.md");
        let page = config_page(markdown, "0.1.0", 0).expect("docs/config.md converts");
        for line in markdown.lines().filter(|l| l.starts_with("### ")) {
            let title = inline(line.trim_start_matches('#').trim());
            assert!(
                page.contains(&format!(".SS {title}\n")),
                "lost the section {line}"
            );
        }
        // Nothing in the output is a roff request it did not mean.
        for line in page.lines().filter(|l| l.starts_with('.')) {
            let request = line.split_whitespace().next().unwrap_or_default();
            assert!(
                [".TH", ".SH", ".SS", ".PP", ".RS", ".RE", ".nf", ".fi", ".TP", ".IP"]
                    .contains(&request),
                "unexpected request: {line}"
            );
        }
    }
}
