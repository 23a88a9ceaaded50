//! The SVG chart: Mpps per traffic mix, the balancer next to the XDP_TX
//! floor. `plotters` is built without its font features: the SVG backend
//! writes `<text>` elements and the viewer picks the font, so nothing here
//! needs fontconfig or a system font.

use std::path::Path;

use anyhow::Result;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::dataplane::MixRow;

const BALANCER: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FLOOR: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);

pub fn mix_chart(path: &Path, title: &str, mixes: &[MixRow]) -> Result<()> {
    let n = mixes.len().max(1);
    let root = SVGBackend::new(path, (980, 190 + 64 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max =
        mixes.iter().map(|m| m.floor_mpps.max(1_000.0 / m.ns_min)).filter(|x| x.is_finite()).fold(1.0f64, f64::max)
            * 1.25;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: Mpps per traffic mix (one core, BPF_PROG_TEST_RUN)"), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(200)
        // A free band below the last mix holds the legend.
        .build_cartesian_2d(0.0..max, -1.3..(n as f64 - 0.5))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(0)
        .x_desc("million packets per second (1000 / median ns per packet)")
        .label_style(("sans-serif", 13))
        .draw()?;

    // Mix 0 at the top.
    let y_of = |i: usize| (n - 1 - i) as f64;
    chart
        .draw_series(mixes.iter().enumerate().map(|(i, m)| {
            let y = y_of(i);
            Rectangle::new([(0.0, y + 0.04), (m.mpps, y + 0.38)], BALANCER.filled())
        }))?
        .label("balancer (median of rounds; whisker: range of rounds)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], BALANCER.filled()));
    chart
        .draw_series(mixes.iter().enumerate().map(|(i, m)| {
            let y = y_of(i);
            Rectangle::new([(0.0, y - 0.38), (m.floor_mpps, y - 0.04)], FLOOR.filled())
        }))?
        .label("floor: XDP_TX-only program, same frames, same rounds")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], FLOOR.filled()));
    // Spread of the balancer's rounds.
    chart.draw_series(mixes.iter().enumerate().map(|(i, m)| {
        let y = y_of(i) + 0.21;
        PathElement::new(vec![(1_000.0 / m.ns_max, y), (1_000.0 / m.ns_min, y)], BLACK.stroke_width(2))
    }))?;
    let value_style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(mixes.iter().enumerate().map(|(i, m)| {
        let y = y_of(i) + 0.21;
        let x = (1_000.0 / m.ns_min).max(m.mpps) + max * 0.01;
        let path = if m.path_verified { "" } else { ", WRONG PATH" };
        Text::new(
            format!("{:.2} Mpps, {:.0} ns, {:.2}x floor{path}", m.mpps, m.ns, m.ratio),
            (x, y),
            value_style.clone(),
        )
    }))?;
    chart.draw_series(mixes.iter().enumerate().map(|(i, m)| {
        let y = y_of(i) - 0.21;
        Text::new(
            format!("{:.2} Mpps, {:.0} ns", m.floor_mpps, m.floor_ns),
            (m.floor_mpps + max * 0.01, y),
            value_style.clone(),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;

    // Mix names left of the axis, at each group's centre.
    let name_style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, m) in mixes.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(0.0, y_of(i)));
        root.draw(&Text::new(m.name.clone(), (px - 10, py), name_style.clone()))?;
    }
    root.present()?;
    Ok(())
}
