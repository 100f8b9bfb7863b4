package tokenizer

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// models are the tokenizers `just setup` puts under .cache/tokenizers.
var models = []string{"qwen3", "llama3", "gemma3"}

// repoRoot walks up from the package directory to the directory holding go.mod.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// modelDir returns the directory of a test tokenizer, failing (not skipping: CI must
// have it) when `just setup` has not been run.
func modelDir(tb testing.TB, name string) string {
	tb.Helper()
	dir := filepath.Join(repoRoot(tb), ".cache", "tokenizers", name)
	if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
		tb.Fatalf("tokenizer %s missing (%v): run `just setup`", name, err)
	}
	return dir
}

// dirOf returns the directory of a test tokenizer, including the flagged variant.
func dirOf(tb testing.TB, name string) string {
	tb.Helper()
	if name == flaggedModel {
		return flaggedDir(tb)
	}
	return modelDir(tb, name)
}

var loaded sync.Map // model name -> *Tokenizer

// loadModel loads a test tokenizer once per test binary.
func loadModel(tb testing.TB, name string) *Tokenizer {
	tb.Helper()
	if tok, ok := loaded.Load(name); ok {
		return tok.(*Tokenizer)
	}
	dir := dirOf(tb, name)
	tok, err := Load(dir)
	if err != nil {
		tb.Fatalf("Load(%s): %v", dir, err)
	}
	loaded.Store(name, tok)
	return tok
}

// flaggedModel is Qwen 3 with added-token flags the real files leave off (lstrip, rstrip,
// single_word, normalized), so the parity test covers those rules too.
const flaggedModel = "qwen3-flags"

var (
	flaggedOnce sync.Once
	flaggedPath string
	flaggedErr  error
)

// flaggedDir writes the flagged tokenizer into a temporary directory, once per binary.
func flaggedDir(tb testing.TB) string {
	tb.Helper()
	src := modelDir(tb, "qwen3")
	flaggedOnce.Do(func() {
		var data []byte
		if data, flaggedErr = os.ReadFile(filepath.Join(src, "tokenizer.json")); flaggedErr != nil {
			return
		}
		var spec map[string]json.RawMessage
		if flaggedErr = json.Unmarshal(data, &spec); flaggedErr != nil {
			return
		}
		var added []map[string]any
		if flaggedErr = json.Unmarshal(spec["added_tokens"], &added); flaggedErr != nil {
			return
		}
		flags := map[string]map[string]bool{
			"<|im_start|>":  {"lstrip": true},
			"<|im_end|>":    {"rstrip": true},
			"<think>":       {"single_word": true},
			"</think>":      {"lstrip": true, "rstrip": true},
			"<tool_call>":   {"normalized": true},
			"<|file_sep|>":  {"single_word": true, "lstrip": true},
			"<|box_start|>": {"normalized": true, "rstrip": true},
		}
		for _, a := range added {
			for k, v := range flags[a["content"].(string)] {
				a[k] = v
			}
		}
		if spec["added_tokens"], flaggedErr = json.Marshal(added); flaggedErr != nil {
			return
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if flaggedErr = enc.Encode(spec); flaggedErr != nil {
			return
		}
		if flaggedPath, flaggedErr = os.MkdirTemp("", "tokenizer-flags-"); flaggedErr != nil {
			return
		}
		flaggedErr = os.WriteFile(filepath.Join(flaggedPath, "tokenizer.json"), buf.Bytes(), 0o644)
	})
	if flaggedErr != nil {
		tb.Fatalf("write flagged tokenizer: %v", flaggedErr)
	}
	return flaggedPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if flaggedPath != "" {
		os.RemoveAll(flaggedPath)
	}
	os.Exit(code)
}

// refJob, refChat and refResult are the JSON exchanged with testdata/reference.py.
type refJob struct {
	Dir    string    `json:"dir"`
	Texts  []string  `json:"texts"`
	Pre    bool      `json:"pretokenize"`
	Decode [][]int   `json:"decode"`
	Chats  []refChat `json:"chats,omitempty"`
}

type refChat struct {
	Messages            []map[string]string `json:"messages"`
	AddGenerationPrompt bool                `json:"add_generation_prompt"`
}

type refResult struct {
	IDs         [][]int    `json:"ids"`
	Decoded     []string   `json:"decoded"`
	DecodedSkip []string   `json:"decoded_skip"`
	Pretokens   [][]string `json:"pretokens"`
	Decode      []string   `json:"decode"`
	DecodeSkip  []string   `json:"decode_skip"`
	Chats       []string   `json:"chats"`
}

// runReference runs testdata/reference.py once for all jobs.
func runReference(tb testing.TB, jobs []refJob) []refResult {
	tb.Helper()
	root := repoRoot(tb)
	python := filepath.Join(root, ".venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		tb.Fatalf("reference Python missing (%v): run `just setup`", err)
	}
	req, err := json.Marshal(map[string]any{"jobs": jobs})
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(python, filepath.Join("testdata", "reference.py"))
	cmd.Stdin = bytes.NewReader(req)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("testdata/reference.py: %v\n%s\n(the venv needs tokenizers and transformers: run `just setup`)", err, stderr.Bytes())
	}
	var resp struct {
		Jobs []refResult `json:"jobs"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil {
		tb.Fatalf("parse reference output: %v", err)
	}
	if len(resp.Jobs) != len(jobs) {
		tb.Fatalf("reference returned %d jobs; want %d", len(resp.Jobs), len(jobs))
	}
	return resp.Jobs
}
