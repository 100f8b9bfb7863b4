package results

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/bench"
)

func rec(id string, warmup bool, errMsg string) Record {
	r := Record{ID: id, Sweep: "t", Config: bench.Config{Model: "m", Mode: "standalone"}, Warmup: warmup, Error: errMsg}
	if errMsg == "" {
		r.Result = &bench.Result{DecodeTokS: 1}
	}
	return r
}

func TestStoreTruncatesTornLine(t *testing.T) {
	tests := []struct {
		name string
		tail string
	}{
		{"half a line", `{"id":"c","sweep":"t","con`},
		{"zero-filled line", "\x00\x00\x00\x00\n"},
		{"garbage line", "{not json\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), RunsFile)
			s, err := OpenStore(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"a", "b"} {
				if err := s.Append(rec(id, false, "")); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			good, _ := os.ReadFile(path)
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString(tt.tail)
			f.Close()

			recs, err := ReadRuns(path)
			if err != nil || len(recs) != 2 {
				t.Fatalf("ReadRuns = %d records, %v; want 2, nil", len(recs), err)
			}
			s, err = OpenStore(path)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(s.Records()); n != 2 {
				t.Errorf("OpenStore kept %d records; want 2", n)
			}
			if err := s.Append(rec("c", false, "")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			data, _ := os.ReadFile(path)
			if !strings.HasPrefix(string(data), string(good)) || strings.Count(string(data), "\n") != 3 {
				t.Errorf("file after truncate+append:\n%q\nwant the two good lines then one more", data)
			}
			recs, err = ReadRuns(path)
			if err != nil || len(recs) != 3 || recs[2].ID != "c" {
				t.Errorf("ReadRuns = %d records, %v; want a, b, c", len(recs), err)
			}
		})
	}
}

func TestStoreRejectsMalformedMiddleLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), RunsFile)
	os.WriteFile(path, []byte(`{"id":"a"}`+"\n{oops\n"+`{"id":"b"}`+"\n"), 0o644)
	if _, err := OpenStore(path); err == nil || !strings.Contains(err.Error(), RunsFile+":2:") {
		t.Errorf("OpenStore = %v; want an error naming line 2", err)
	}
	if _, err := ReadRuns(path); err == nil {
		t.Errorf("ReadRuns = nil error; want one")
	}
}

func TestStoreLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), RunsFile)
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := OpenStore(path); !errors.Is(err, ErrLocked) {
		t.Errorf("second OpenStore = %v; want ErrLocked", err)
	}
}

func TestLatest(t *testing.T) {
	recs := []Record{rec("a", false, "boom"), rec("b", false, ""), rec("a", false, ""), rec("a", false, "later failure"), rec("c", false, "x"), rec("c", false, "y")}
	got := Latest(recs)
	if len(got) != 3 {
		t.Fatalf("Latest = %d records; want 3", len(got))
	}
	if got[0].ID != "a" || !got[0].OK() {
		t.Errorf("a: %+v; want its successful attempt", got[0])
	}
	if got[2].ID != "c" || got[2].Error != "y" {
		t.Errorf("c: error %q; want the last failed attempt, y", got[2].Error)
	}
}

func TestRecordID(t *testing.T) {
	c := bench.Config{Model: "m", Mode: "pipeline", Stages: 2, Prompt: "p"}
	ids := map[string]bool{}
	for _, id := range []string{RecordID(c, 0, false), RecordID(c, 1, false), RecordID(c, 0, true), RecordID(bench.Config{Model: "m", Mode: "pipeline", Stages: 3, Prompt: "p"}, 0, false)} {
		if ids[id] || len(id) != 16 {
			t.Errorf("id %q repeated or not 16 hex digits", id)
		}
		ids[id] = true
	}
	if RecordID(c, 0, false) != RecordID(c, 0, false) {
		t.Error("RecordID is not deterministic")
	}
	d := c
	d.Prompt = "other"
	if ConfigKey(c) != ConfigKey(d) {
		t.Error("ConfigKey depends on the prompt; it must not")
	}
}
