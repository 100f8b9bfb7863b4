// Package bench executes one run configuration against an engine and measures it: every decode
// step is timed after evaluation, so the numbers are what the hardware did, not when MLX was asked.
package bench

// Config is one run: which model, how it is executed, and what is generated. The zero value of
// every optional field means "the default" (standalone, loopback link, greedy sampling).
type Config struct {
	// Model is a checkpoint directory (Hugging Face layout).
	Model string `json:"model" yaml:"model"`
	// Mode is "standalone", "pipeline", "spec", "pipeline+spec" or "openai".
	Mode string `json:"mode" yaml:"mode"`
	// Prompt is the raw text sent to the model (wrapped in the chat template when Chat is set).
	Prompt string `json:"prompt" yaml:"prompt"`
	Chat   bool   `json:"chat,omitempty" yaml:"chat"`
	// MaxTokens bounds generation; IgnoreEOS makes the run produce exactly MaxTokens tokens.
	MaxTokens int  `json:"max_tokens" yaml:"max_tokens"`
	IgnoreEOS bool `json:"ignore_eos,omitempty" yaml:"ignore_eos"`
	// Temperature 0 is greedy decoding.
	Temperature float64 `json:"temperature" yaml:"temperature"`
	TopP        float64 `json:"top_p,omitempty" yaml:"top_p"`
	Seed        uint64  `json:"seed" yaml:"seed"`
	// Dtype is the compute dtype ("f32", "bf16", "f16"); empty picks the backend's best.
	Dtype string `json:"dtype,omitempty" yaml:"dtype"`

	// Pipeline settings.
	Stages    int    `json:"stages,omitempty" yaml:"stages"`
	Split     string `json:"split,omitempty" yaml:"split"`
	Transport string `json:"transport,omitempty" yaml:"transport"`
	Link      string `json:"link,omitempty" yaml:"link"`
	// Hosts is a hosts file (see LoadHosts) naming ranks already running on other machines;
	// empty starts the other stages as local processes.
	Hosts string `json:"hosts,omitempty" yaml:"hosts"`
	// Reply is what the last stage sends back: "token" (it samples; the default) or "topk:K"
	// (its K most likely tokens with log-probabilities; the driver samples).
	Reply string `json:"reply,omitempty" yaml:"reply"`

	// Speculative settings.
	Drafter     string `json:"drafter,omitempty" yaml:"drafter"`
	Draft       string `json:"draft,omitempty" yaml:"draft"`
	DraftTokens int    `json:"draft_tokens,omitempty" yaml:"draft_tokens"`
	// DraftConfidence, above 0, cuts each greedy dflash draft where the drafter's joint
	// probability of its drafts falls below it (engines.DFlashDrafter.SetConfidence).
	DraftConfidence float64 `json:"draft_confidence,omitempty" yaml:"draft_confidence"`

	// OpenAI-compatible endpoint settings (mode "openai").
	BaseURL     string `json:"base_url,omitempty" yaml:"base_url"`
	Concurrency int    `json:"concurrency,omitempty" yaml:"concurrency"`
}

// Step is the measurement of one decode step. Times are milliseconds of wall clock. In pipeline
// and speculative modes steps run in lockstep and times are taken after the step's arrays were
// evaluated. Standalone decoding is pipelined (Result.StepTiming says so): the step is enqueued
// before the previous token is read, so ForwardMS is the host time to build and enqueue it and
// SampleMS the time then spent waiting for its token id; their sum is the step's wall time.
type Step struct {
	// ForwardMS is the model forward time (the verify forward in speculative modes), summed over
	// pipeline stages; StageForwardMS has one entry per stage in pipeline modes.
	ForwardMS      float64   `json:"forward_ms"`
	StageForwardMS []float64 `json:"stage_forward_ms,omitempty"`
	// NetworkMS is the time on the wire per step (all hops), excluding remote forward time.
	NetworkMS float64 `json:"network_ms,omitempty"`
	// HopNetworkMS splits NetworkMS by hop over the TCP transport: entry k is the time on the
	// wire between stage k and stage k+1, both ways (absent over mlx-ring, whose stages report none).
	HopNetworkMS []float64 `json:"hop_network_ms,omitempty"`
	SampleMS     float64   `json:"sample_ms"`
	DraftMS      float64   `json:"draft_ms,omitempty"`
	// Bytes counts payload bytes sent and received on all hops in this step.
	Bytes int64 `json:"bytes,omitempty"`
	// HostSyncs counts the host's waits on MLX during the step (blocking evaluations and reads
	// of array data); standalone mode only, where it is 1: the token id's read.
	HostSyncs int64 `json:"host_syncs,omitempty"`
	// Tokens is how many tokens this step emitted (1 outside speculative modes).
	Tokens int `json:"tokens"`
	// Accepted is how many drafted tokens were accepted (speculative modes only).
	Accepted int `json:"accepted,omitempty"`
}

// Acceptance summarises speculative decoding over a run.
type Acceptance struct {
	Drafted      int       `json:"drafted"`
	Accepted     int       `json:"accepted"`
	Rate         float64   `json:"rate"`
	MeanAccepted float64   `json:"mean_accepted"`
	ByPosition   []float64 `json:"by_position"`
	// NormalisedSteps counts greedy verify steps that normalised the logits because a position
	// might tie after rounding (the others took the raw argmax).
	NormalisedSteps int `json:"normalised_steps,omitempty"`
	// NoDraftSteps counts verify steps at which the drafter proposed nothing (lookup where it
	// finds no match); each emitted the target's one token. ByPosition counts only the steps that
	// drafted.
	NoDraftSteps int `json:"no_draft_steps,omitempty"`
}

// DraftingSteps is how many of a run's steps proposed at least one draft.
func (a *Acceptance) DraftingSteps(steps int) int {
	return max(steps-a.NoDraftSteps, 0)
}

// Result is everything one run measured. It is what `hippo run --json` prints and what a sweep
// appends to runs.jsonl (with the configuration and environment beside it).
type Result struct {
	Mode            string  `json:"mode"`
	Model           string  `json:"model"`
	PromptTokens    int     `json:"prompt_tokens"`
	Tokens          []int   `json:"tokens"`
	Text            string  `json:"text"`
	FinishReason    string  `json:"finish_reason"`
	TTFTMS          float64 `json:"ttft_ms"`
	PrefillTokS     float64 `json:"prefill_tok_s"`
	DecodeTokS      float64 `json:"decode_tok_s"`
	PeakMemoryBytes int64   `json:"peak_memory_bytes"`
	Steps           []Step  `json:"steps"`
	// StepTiming says what the steps' forward and sample times mean: "lockstep" (measured after
	// evaluation) or "pipelined" (standalone: see Step).
	StepTiming string      `json:"step_timing,omitempty"`
	Acceptance *Acceptance `json:"acceptance,omitempty"`
	// Device is what MLX computed on in this process ("cpu", "gpu (NAME)"); set by hippo run.
	Device string `json:"device,omitempty"`
	// Link and Transport describe the pipeline link the run used ("" when standalone).
	Link      string `json:"link,omitempty"`
	Transport string `json:"transport,omitempty"`
	Stages    int    `json:"stages,omitempty"`
	// Split is the pipeline's layer ranges, as given or as the driver planned them from the
	// ranks' free memory.
	Split string `json:"split,omitempty"`
}
