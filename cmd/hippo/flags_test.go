package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/bench"
)

// parseFlags runs hippo with args, the action of the (sub)command at path replaced by read, and
// returns what read returned: the flags as that command sees them, without running it.
func parseFlags[T any](t *testing.T, cmd *cli.Command, path, args []string, read func(*cli.Context) (T, error)) T {
	t.Helper()
	leaf := cmd
	for _, name := range path[1:] {
		var next *cli.Command
		for _, sub := range leaf.Subcommands {
			if sub.Name == name {
				next = sub
			}
		}
		if next == nil {
			t.Fatalf("hippo %v: no subcommand %q", path, name)
		}
		leaf = next
	}
	var got T
	leaf.Action = func(c *cli.Context) (err error) { got, err = read(c); return err }
	app := &cli.App{Name: "hippo", Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
	if err := app.Run(append(append([]string{"hippo"}, path...), args...)); err != nil {
		t.Fatalf("hippo %v %q: %v", path, args, err)
	}
	return got
}

// TestBenchSpecPrompts: a prompt with a comma stays one prompt, prompts given replace the defaults,
// and the token-list flags beside them still take comma-separated lists as well as repeats.
func TestBenchSpecPrompts(t *testing.T) {
	spec := func(args ...string) bench.SpecCompareOptions {
		return parseFlags(t, benchCommand(), []string{"bench", "spec"}, append([]string{"--model", "m"}, args...), specOptions)
	}
	defaults := spec().Prompts
	if len(defaults) != 3 {
		t.Fatalf("default prompts = %q; want the 3 built in", defaults)
	}
	cases := []struct {
		name         string
		args         []string
		wantPrompts  []string
		wantDrafters []string
		wantBlocks   []int
	}{
		{"comma in a prompt", []string{"--prompt", "Hello, world"},
			[]string{"Hello, world"}, []string{"model", "lookup"}, nil}, // nil: 4, 8, 16 within the draft's block
		{"repeated prompts kept whole", []string{"--prompt", "a, b", "--prompt", " c ,d\n"},
			[]string{"a, b", " c ,d\n"}, []string{"model", "lookup"}, nil},
		{"token lists split at commas", []string{"--drafter", "lookup,dflash", "--block", "4,8"},
			defaults, []string{"lookup", "dflash"}, []int{4, 8}},
		{"token lists repeated", []string{"--drafter", "model", "--drafter", "dflash", "--block", "16"},
			defaults, []string{"model", "dflash"}, []int{16}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := spec(tc.args...)
			if d := cmp.Diff(tc.wantPrompts, o.Prompts); d != "" {
				t.Errorf("prompts (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantDrafters, o.Drafters); d != "" {
				t.Errorf("drafters (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantBlocks, o.Blocks); d != "" {
				t.Errorf("blocks (-want +got):\n%s", d)
			}
		})
	}
}

// TestWholeListFlags: every repeatable flag whose values may hold a comma (paths, prompts,
// key=value overrides with lists) takes each value whole.
func TestWholeListFlags(t *testing.T) {
	cases := []struct {
		name string
		cmd  *cli.Command
		path []string
		flag string
		args []string // the flags the command requires besides flag
		want []string
	}{
		{"bench engine --model", benchCommand(), []string{"bench", "engine"}, "model", nil, []string{"runs/a,b", "synth:tiny-qwen3"}},
		{"serve --model", serveCommand(), []string{"serve"}, "model", nil, []string{"runs/a,b", "synth:tiny-qwen3"}},
		{"synth --set", synthCommand(), []string{"synth"}, "set", []string{"--preset", "tiny-qwen3", "--out", "o"}, []string{"target_layer_ids=[1,3]", "rope_scaling={\"a\": 1, \"b\": 2}"}},
		{"sweep --set", sweepCommand(), []string{"sweep"}, "set", nil, []string{"link=[wifi,thunderbolt]", "prompts=[\"a, b\"]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			for _, v := range tc.want {
				args = append(args, "--"+tc.flag, v)
			}
			got := parseFlags(t, tc.cmd, tc.path, args, func(c *cli.Context) ([]string, error) {
				return wholeValues(c, tc.flag), nil
			})
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("--%s %q (-want +got):\n%s", tc.flag, tc.want, d)
			}
		})
	}
}
