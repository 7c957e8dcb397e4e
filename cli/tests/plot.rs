//! `shoal plot` draws the runs it is given: one line per run in each panel, with every
//! round's point, and refuses what it cannot draw with one line.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{arg, finish, shoal_with};

/// The `points` of each thick (data or legend) line in an SVG written by `shoal plot`.
fn thick_lines(svg: &str) -> Vec<usize> {
    svg.split("<polyline")
        .skip(1)
        .filter(|l| l.contains("stroke-width=\"2\""))
        .map(|l| {
            let points = l.split("points=\"").nth(1).unwrap();
            points[..points.find('"').unwrap()]
                .split_whitespace()
                .count()
        })
        .collect()
}

#[test]
fn two_runs_become_two_lines_in_each_panel() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (strategy, rounds) in [("fedavg", "6"), ("fedsgd", "9")] {
        let csv = dir.path().join(format!("{strategy}.csv"));
        finish(&mut shoal_with(&[
            "run",
            "--quiet",
            "--strategy",
            strategy,
            "--rounds",
            rounds,
            "--metrics-out",
            arg(&csv),
        ]))
        .assert_success();
        files.push(csv);
    }
    let svg = dir.path().join("compare.svg");
    finish(&mut shoal_with(&[
        "plot",
        arg(&files[0]),
        arg(&files[1]),
        "--out",
        arg(&svg),
    ]))
    .assert_success();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    // Per panel (accuracy, then loss): a line of 6 and one of 9 points, then two legend marks.
    assert_eq!(thick_lines(&text), [6, 9, 2, 2, 6, 9, 2, 2]);
    for label in ["fedavg", "fedsgd", "accuracy", "loss", "round"] {
        assert!(text.contains(label), "no {label} in the picture");
    }
}

#[test]
fn what_cannot_be_drawn_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.csv");
    std::fs::write(&junk, "a,b\n1,2\n").unwrap();
    let bad_value = dir.path().join("bad.csv");
    std::fs::write(&bad_value, "round,accuracy\n1,0.5\n2,lots\n").unwrap();
    let svg = dir.path().join("x.svg");
    for (args, message) in [
        (
            vec!["plot", arg(&junk), "--out", arg(&svg)],
            "has no round column",
        ),
        (
            vec!["plot", arg(&bad_value), "--out", arg(&svg)],
            "line 3: \"lots\" is not a number",
        ),
        (
            vec!["plot", "/no/such.csv", "--out", arg(&svg)],
            "reading /no/such.csv",
        ),
        (
            vec!["plot", arg(&bad_value), "--out", "x.png"],
            "writes SVG",
        ),
    ] {
        let out = finish(&mut shoal_with(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
    assert!(!svg.exists());
}
