package results

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/hippo-bench/hippo/bench"
)

// RunsFile is the name of the raw result log inside a sweep's output directory.
const RunsFile = "runs.jsonl"

// ErrLocked reports that another process is appending to the same runs.jsonl.
var ErrLocked = errors.New("results: runs.jsonl is in use by another sweep")

// Record is one line of runs.jsonl: one finished run (or a failed attempt) with everything needed to
// regenerate summaries, plots and reports without the sweep file.
type Record struct {
	// ID is a stable hash of the configuration, the repeat index and the warm-up flag (RecordID).
	ID     string       `json:"id"`
	Sweep  string       `json:"sweep"`
	Config bench.Config `json:"config"`
	Repeat int          `json:"repeat"`
	// Warmup runs are recorded for completeness but never enter statistics.
	Warmup bool          `json:"warmup"`
	Result *bench.Result `json:"result,omitempty"`
	Env    Env           `json:"env"`
	// Started is when the run began; ElapsedMS is its wall time as the runner saw it.
	Started   time.Time `json:"started"`
	ElapsedMS float64   `json:"elapsed_ms"`
	// Error is set when the run failed; Result is then absent.
	Error string `json:"error,omitempty"`
}

// OK reports whether the run completed and produced a result.
func (r *Record) OK() bool { return r.Error == "" && r.Result != nil }

// Env is the environment a run was measured in.
type Env struct {
	Host       string `json:"host"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPU        string `json:"cpu,omitempty"`
	CPUs       int    `json:"cpus,omitempty"`
	RAMBytes   uint64 `json:"ram_bytes,omitempty"`
	GoVersion  string `json:"go_version"`
	MLXVersion string `json:"mlx_version,omitempty"`
	// GitCommit is the commit of the harness, with "-dirty" when tracked files were modified.
	GitCommit string `json:"git_commit,omitempty"`
	// Hosts is the hosts file the sweep ran with ("" for local processes only).
	Hosts string `json:"hosts,omitempty"`
	// Link holds the parameters of the run's link profile (latency, bandwidth, source), as the
	// transport layer describes them.
	Link map[string]any `json:"link,omitempty"`
}

// RecordID is the stable identity of one run: the same configuration, repeat index and warm-up flag
// always give the same id, which is what --resume matches on.
func RecordID(c bench.Config, repeat int, warmup bool) string {
	kind := "r"
	if warmup {
		kind = "w"
	}
	return hashConfig(c, kind+strconv.Itoa(repeat))
}

// ConfigKey identifies a configuration for statistics: the configuration without its prompt, so the
// prompts of a sweep are samples of one workload rather than separate configurations.
func ConfigKey(c bench.Config) string {
	c.Prompt = ""
	return hashConfig(c, "")
}

func hashConfig(c bench.Config, suffix string) string {
	b, err := json.Marshal(c)
	if err != nil {
		// bench.Config holds only strings, numbers and bools; Marshal cannot fail on it.
		panic(fmt.Sprintf("results: marshal config: %v", err))
	}
	h := sha256.New()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(suffix))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Store appends records to a runs.jsonl file. Each Append writes one complete line and fsyncs it,
// so a crash loses at most the line being written; OpenStore cuts such a torn line off. A Store
// holds an exclusive advisory lock on the file. Its methods must not be called concurrently.
type Store struct {
	f       *os.File
	path    string
	records []Record
}

// OpenStore opens (creating if needed) the runs.jsonl at path for appending. Records already in the
// file are parsed and kept (see Records). A torn last line, left by a process killed mid-write, is
// truncated away; any other malformed line is an error, because silently skipping it could lose or
// duplicate runs.
func OpenStore(path string) (*Store, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open results: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, ErrLocked)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	recs, good, err := parseRuns(path, data)
	if err != nil {
		f.Close()
		return nil, err
	}
	if good < len(data) {
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncate torn line in %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("sync %s: %w", path, err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek %s: %w", path, err)
	}
	return &Store{f: f, path: path, records: recs}, nil
}

// Records returns the records that were in the file when it was opened. The slice is shared: do not
// modify it.
func (s *Store) Records() []Record { return s.records }

// Path is the file the store appends to.
func (s *Store) Path() string { return s.path }

// Append writes r as one JSON line and fsyncs the file before returning.
func (s *Store) Append(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode run %s: %w", r.ID, err)
	}
	b = append(b, '\n')
	if _, err := s.f.Write(b); err != nil {
		return fmt.Errorf("append to %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", s.path, err)
	}
	return nil
}

// Close releases the lock and closes the file.
func (s *Store) Close() error { return s.f.Close() }

// ReadRuns reads every record of a runs.jsonl file without modifying it. A torn last line is
// ignored; other malformed lines are errors.
func ReadRuns(path string) ([]Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	recs, _, err := parseRuns(path, data)
	return recs, err
}

// parseRuns decodes JSON lines and returns the records and the length of the well-formed prefix.
// Only the final line may be malformed (a torn write); it is excluded from that prefix.
func parseRuns(path string, data []byte) ([]Record, int, error) {
	var recs []Record
	off, line := 0, 0
	for off < len(data) {
		line++
		end := bytes.IndexByte(data[off:], '\n')
		last := end < 0
		if last {
			end = len(data) - off
		}
		text := bytes.TrimSpace(data[off : off+end])
		next := off + end + 1
		if last {
			// A final line without its newline was never completely written.
			return recs, off, nil
		}
		if len(text) == 0 {
			off = next
			continue
		}
		var r Record
		if err := json.Unmarshal(text, &r); err != nil || r.ID == "" {
			if next >= len(data) || len(bytes.TrimSpace(data[next:])) == 0 {
				return recs, off, nil // torn or zero-filled last line
			}
			if err == nil {
				err = errors.New("no id")
			}
			return nil, 0, fmt.Errorf("%s:%d: malformed run record (%v): fix or delete the line", path, line, err)
		}
		recs = append(recs, r)
		off = next
	}
	return recs, off, nil
}

// Latest returns, for every run id, the record that counts: the first successful one, or the last
// failed attempt when none succeeded. Order follows first appearance. Warm-up records are included;
// callers filter them as needed.
func Latest(recs []Record) []Record {
	idx := map[string]int{}
	var out []Record
	for _, r := range recs {
		i, seen := idx[r.ID]
		switch {
		case !seen:
			idx[r.ID] = len(out)
			out = append(out, r)
		case !out[i].OK():
			out[i] = r
		}
	}
	return out
}
