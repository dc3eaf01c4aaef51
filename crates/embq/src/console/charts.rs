//! Small SVG bar charts drawn on the server: no script, nothing for the CSP to allow.

use std::fmt::Write;

/// Chart size in SVG units; the stylesheet scales it to the page width.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;

/// A bar chart of `values` (oldest first) titled `label`, its largest value printed.
pub fn bars(label: &str, values: &[u64]) -> String {
    let max = values.iter().copied().max().unwrap_or(0);
    let n = values.len().max(1) as f64;
    let w = WIDTH / n;
    let mut svg = format!(
        "<figure class=\"chart\"><figcaption>{} <span class=\"muted\">(max {max}, last {} min)</span></figcaption>\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">",
        super::html::esc(label),
        values.len(),
        super::html::esc(label)
    );
    for (i, v) in values.iter().enumerate() {
        if *v == 0 {
            continue;
        }
        // Every non-zero minute gets at least a 2-unit bar so it stays visible.
        let h = ((*v as f64 / max as f64) * (HEIGHT - 2.0)).max(2.0);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{v}</title></rect>",
            i as f64 * w,
            HEIGHT - h,
            (w - 1.0).max(1.0)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_non_zero_minute_scaled_to_the_largest() {
        let svg = bars("done", &[0, 5, 10]);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("height=\"118.0\""), "{svg}");
        assert!(svg.contains("max 10, last 3 min"));
    }
}
