// Package experiments turns sweep files into runs and runs them.
//
// A sweep file (experiments/*.yaml) declares a matrix of run settings the way a GitHub Actions job
// matrix does:
//
//	name: thunderbolt-vs-wifi
//	description: Pipeline decode over three links.
//	repeats: 5          # measured runs per configuration and prompt (default 1)
//	warmup: 1           # unmeasured runs per configuration before them (default 0)
//	timeout: 10m        # per run (default 30m)
//	hosts: hosts.yaml   # optional, relative to this file; local processes when absent
//	prompts: ["Explain pipeline parallelism."]   # or prompts_file: prompts.txt
//	matrix:             # each key a value or a list; any bench.Config field but prompt
//	  model: synth:qwen3-0.6b
//	  mode: [standalone, pipeline]
//	  link: [loopback, thunderbolt, wifi]
//	  stages: 2
//	defaults:           # fixed values for any other bench.Config field
//	  ignore_eos: true
//	exclude:            # partial assignments removed from the cross product
//	  - {mode: pipeline, link: loopback}
//	include:            # partial assignments merged in, or added as new configurations
//	  - {mode: pipeline, link: wifi, transport: tcp}
//
// Expansion: the cross product of the matrix (model outermost, so weights load once), minus the
// exclude entries, then each include entry is merged into every combination whose matrix values it
// agrees with (adding its other keys), or added as a new combination when it agrees with none (a
// new combination also takes the matrix keys that have a single value, such as the model).
// Single-value --set overrides are forced onto every configuration last; defaults fill the rest.
//
// Settings a mode does not use are dropped, not flagged: standalone and spec ignore stages, link
// and transport; only spec modes use drafter, draft and draft_tokens; only openai uses base_url
// and concurrency. Configurations that become identical are merged, so mode: [standalone,
// pipeline] crossed with link: [thunderbolt, wifi] gives one standalone and two pipeline
// configurations. Three things are errors instead: an include entry (or --set) naming a mode
// together with a setting that mode ignores, a matrix key or default that no configuration uses
// at all, and a configuration missing what its mode needs (pipeline modes need stages >= 2, spec
// modes a drafter, drafter model a draft model, openai a base_url). Every error names
// file:line:column and what to do, and nothing runs.
//
// Execute runs a sweep through an Executor, appending one JSON line per run to runs.jsonl (see
// package results) and skipping completed runs on resume.
package experiments
