//! The causality stage on the real bars of all six pairs, through PostgreSQL, the queue,
//! validation and export, every test against `reference/causality_reference.py`:
//! `grangercausalitytests`' ssr F test over the same 5-minute rows, from the CSV files, computed in
//! extended precision without BLAS (so the same on every CPU) and checked there against statsmodels.
//!
//! The tolerances come from the problem, not from what one machine printed. The worker solves the
//! least-squares fits by Householder QR in f64, which is backward stable: its sums of squares are
//! those of data perturbed by at most γ = n·p·u relative (n rows, p columns, u = 2⁻⁵³; Higham,
//! *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Theorems 19.10 and 20.3). F's
//! numerator SSR_r − SSR_u amplifies that by κ = SSR_r / (SSR_r − SSR_u) (the worker reads it off
//! Qᵀy, which does better, but κ bounds it), both sums and the square add a factor 4: F within
//! 4·γ·κ relative (plus the reference's own γ in its unit roundoff). p moves with F by its
//! condition |d ln p / d ln F|, and its double-precision evaluation (statrs' regularised incomplete
//! beta) rounds an exponent of the size the reference reports, plus one rounding per term of its
//! continued fraction (at most 141 terms in statrs), each at most 8u.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use ephemera_worker::run;

const U: f64 = f64::EPSILON / 2.0;

/// The share of the tolerance (`rel` relative) |ours − theirs| uses.
fn share(ours: Option<f64>, theirs: f64, rel: f64, at: &str) -> f64 {
    match ours {
        None => {
            assert!(theirs.is_nan(), "{at}: NULL, reference {theirs}");
            0.0
        }
        Some(o) => {
            assert!(!theirs.is_nan(), "{at}: {o}, reference undefined");
            if o == theirs {
                0.0
            } else {
                (o - theirs).abs() / (rel * theirs.abs())
            }
        }
    }
}

#[tokio::test]
async fn granger_tests_match_statsmodels_for_every_ordered_pair_month_and_lag() {
    let (url, client) = common::seeded("causality").await;
    common::read_run(&client, "causality").await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("causality-export");
    let _ = std::fs::remove_dir_all(&out);
    let summary = run::run(common::options(
        &url,
        "causality",
        &["causality", "validate", "export"],
        Some(&out),
    ))
    .await
    .unwrap();
    // 2 months × 3 stages, each month over all pairs.
    assert_eq!((summary.partitions_done, summary.partitions_failed), (6, 0));
    let v = summary.validation.clone().unwrap();
    assert_eq!(
        (
            v.problems,
            v.nulls_beyond_warm_up,
            v.non_finite,
            v.out_of_range
        ),
        (0, 0, 0, 0),
        "{v:?}"
    );

    let reference = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("causality_reference.txt");
    let status = Command::new(common::root().join(".venv/bin/python"))
        .arg(common::root().join("worker/tests/reference/causality_reference.py"))
        .arg(&reference)
        .args(common::csv_files())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the reference script failed (make setup installs statsmodels)"
    );
    let ours: BTreeMap<(String, String, String, i32), tokio_postgres::Row> = client
        .query(
            "SELECT cause, effect, month::text, lag, f_stat, p_value, nobs, df_num, df_den
               FROM causality",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3)), r))
        .collect();
    let text = std::fs::read_to_string(&reference).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    // 6 pairs: 30 ordered pairs × 5 lags × 2 months.
    assert_eq!(lines.len(), 300);
    assert_eq!(
        ours.len(),
        lines.len(),
        "one row per ordered pair, month and lag"
    );
    let (mut worst_f, mut worst_p) = ((0.0f64, String::new()), (0.0f64, String::new()));
    let mut significant = 0;
    for f in &lines {
        let key = (
            f[0].to_string(),
            f[1].to_string(),
            f[2].to_string(),
            f[3].parse::<i32>().unwrap(),
        );
        let o = ours
            .get(&key)
            .unwrap_or_else(|| panic!("no row for {key:?}"));
        let at = format!("{key:?}");
        let x = |s: &str| s.parse::<f64>().unwrap();
        let i = |s: &str| s.parse::<i32>().unwrap();
        assert_eq!(
            (o.get::<_, i32>(8), o.get::<_, i32>(7), o.get::<_, i32>(6)),
            (i(f[6]), i(f[7]), i(f[8])),
            "{at}: df_den, df_num, nobs"
        );
        let (n, lag) = (i(f[8]) as f64, i(f[3]) as f64);
        let (kappa, cond_p, gamma_mag, u_ref) = (x(f[9]), x(f[10]), x(f[11]), x(f[12]));
        let tol_f = 4.0 * n * (2.0 * lag + 1.0) * (U + u_ref) * kappa;
        let tol_p = cond_p * tol_f + 8.0 * U * (gamma_mag + 2.0 * 141.0);
        let sf = share(o.get(4), x(f[4]), tol_f, &at);
        let sp = share(o.get(5), x(f[5]), tol_p, &at);
        if sf > worst_f.0 {
            worst_f = (sf, at.clone());
        }
        if sp > worst_p.0 {
            worst_p = (sp, at.clone());
        }
        if x(f[5]) < 0.01 {
            significant += 1;
        }
    }
    println!(
        "f_stat  worst {:.2e} of its tolerance ({})",
        worst_f.0, worst_f.1
    );
    println!(
        "p_value worst {:.2e} of its tolerance ({})",
        worst_p.0, worst_p.1
    );
    assert!(
        worst_f.0 <= 1.0,
        "f_stat outside tolerance at {}",
        worst_f.1
    );
    assert!(
        worst_p.0 <= 1.0,
        "p_value outside tolerance at {}",
        worst_p.1
    );
    // The data has both: tests that reject at 1% and tests that do not.
    println!("{significant} of {} tests with p < 0.01", lines.len());
    assert!(significant > 0 && significant < lines.len());
    // The gaps end runs of buckets: each lag more drops one row per run of the joint series.
    let nobs = |k: &(String, String, String, i32)| ours[k].get::<_, i32>(6);
    let runs: Vec<i32> = ours
        .keys()
        .filter(|k| k.3 == 1)
        .map(|k| nobs(k) - nobs(&(k.0.clone(), k.1.clone(), k.2.clone(), 2)))
        .collect();
    println!(
        "runs of consecutive buckets per ordered pair and month: {}..={}",
        runs.iter().min().unwrap(),
        runs.iter().max().unwrap()
    );
    assert!(runs.iter().all(|r| *r >= 1) && runs.iter().any(|r| *r > 1));
    let manifest: ephemera_contract::Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.objects.len(), 2, "one object a month");
    assert_eq!(
        manifest.objects.iter().map(|o| o.rows).sum::<u64>(),
        summary.rows_out
    );
    assert_eq!(summary.rows_out, 300);
}
