//! Inline SVG bar charts of run history, rendered on the server so that they read without
//! JavaScript and load nothing.
//!
//! Invariants: a chart is a function of its numbers alone (no clock, no randomness); every
//! bar has a `<title>` with its exact value, so the chart is readable with a screen reader
//! and testable from its markup; an empty series renders a short note instead of an empty
//! box.

use maud::{html, Markup};

/// Chart size in the SVG's own units; CSS scales it to the width available.
const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 60.0;
/// The fewest bar slots a chart is divided into.
const MIN_SLOTS: usize = 10;

/// One bar group: a label (the run) and one value per series.
pub(crate) struct Point {
    pub label: String,
    pub values: Vec<u64>,
}

/// Whether `value` is unusually low for `values`: under half their median, the median being
/// at least 2 (the daemon's low-volume alert uses the same idea over more runs).
pub(crate) fn is_low(value: u64, values: &[u64]) -> bool {
    let mut sorted: Vec<u64> = values.to_vec();
    sorted.sort_unstable();
    let Some(&median) = sorted.get(sorted.len() / 2) else {
        return false;
    };
    median >= 2 && value * 2 < median
}

/// A bar chart of `points` (oldest first), one bar per series side by side; `series` names
/// the series (their CSS classes are `s0`, `s1`, ...). With `mark_low`, bars of the first
/// series that are unusually low get the class `low`.
pub(crate) fn bars(title: &str, series: &[&str], points: &[Point], mark_low: bool) -> Markup {
    if points.is_empty() {
        return html! { p.muted { "No runs yet." } };
    }
    let max = points
        .iter()
        .flat_map(|p| p.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let first: Vec<u64> = points
        .iter()
        .map(|p| p.values.first().copied().unwrap_or(0))
        .collect();
    // At least MIN_SLOTS slots, so that a few runs do not make a few very wide bars.
    let slot = WIDTH / points.len().max(MIN_SLOTS) as f64;
    let per = series.len().max(1) as f64;
    let bar = (slot * 0.8 / per).max(0.5);
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title)
                preserveAspectRatio="none" {
                title { (title) }
                line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @for (i, point) in points.iter().enumerate() {
                    @for (s, value) in point.values.iter().enumerate() {
                        @let h = if *value == 0 { 0.0 } else { (*value as f64 / max * (HEIGHT - 2.0)).max(1.0) };
                        @let x = i as f64 * slot + slot * 0.1 + s as f64 * bar;
                        @let low = mark_low && s == 0 && is_low(*value, &first);
                        rect class=(format!("s{s}{}", if low { " low" } else { "" }))
                            x=(format!("{x:.2}")) y=(format!("{:.2}", HEIGHT - h))
                            width=(format!("{bar:.2}")) height=(format!("{h:.2}")) {
                            title {
                                (point.label) ": " (series.get(s).copied().unwrap_or("")) " " (value)
                                @if low { " (low)" }
                            }
                        }
                    }
                }
            }
            @if series.len() > 1 {
                figcaption {
                    @for (s, name) in series.iter().enumerate() {
                        span class=(format!("key s{s}")) { (name) }
                        " "
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_run_is_marked_and_every_bar_says_its_value() {
        let points: Vec<Point> = [100, 120, 3, 110]
            .iter()
            .enumerate()
            .map(|(i, v)| Point {
                label: format!("run {}", i + 1),
                values: vec![*v],
            })
            .collect();
        let svg = bars("records per run", &["read"], &points, true).into_string();
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert_eq!(svg.matches("class=\"s0 low\"").count(), 1, "{svg}");
        assert!(svg.contains("run 3: read 3 (low)"), "{svg}");
        assert!(svg.contains("run 2: read 120"), "{svg}");
    }

    #[test]
    fn lows_need_a_median_worth_the_name() {
        assert!(!is_low(0, &[0, 1, 0]));
        assert!(is_low(1, &[10, 10, 1]));
        assert!(!is_low(6, &[10, 10, 6]));
        assert!(!is_low(5, &[]));
    }

    #[test]
    fn titles_are_escaped_and_empty_series_say_so() {
        let points = vec![Point {
            label: "<b>".into(),
            values: vec![1, 2],
        }];
        let svg = bars("a<b", &["x", "y"], &points, false).into_string();
        assert!(svg.contains("a&lt;b") && !svg.contains("<b>"), "{svg}");
        assert!(bars("t", &["x"], &[], false)
            .into_string()
            .contains("No runs yet."));
    }
}
