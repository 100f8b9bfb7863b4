// Package results stores, summarises, plots and reports sweep measurements.
//
// The raw data of a sweep is runs.jsonl: one Record per line (configuration, repeat, warm-up flag,
// bench.Result, environment, timing, error), appended and fsynced run by run through a Store, so
// a sweep killed at any moment keeps every completed run and resumes without duplicates. Every
// derived output is regenerated from that file alone by Build: summary.csv (per-configuration
// statistics: n, mean, stddev, 95% Student's t confidence interval, median, per-step latency
// percentiles, network share, acceptance rate), plots as PNG and SVG (gonum/plot), and report.md.
// Compare sets two sweeps side by side with Welch's t-test.
//
// Statistics count measured runs only: warm-ups are recorded but excluded, and of several attempts
// of one run id the first success counts (Latest). A configuration is a run configuration without
// its prompt, so the prompts of a sweep are samples of one workload.
package results
