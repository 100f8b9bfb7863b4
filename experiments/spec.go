package experiments

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/engines"
)

// DefaultTimeout bounds one run when the sweep file sets no timeout, so a wedged engine cannot
// hang a sweep forever.
const DefaultTimeout = 30 * time.Minute

// Modes are the run modes a sweep may name.
var Modes = []string{"standalone", "pipeline", "spec", "pipeline+spec", "openai"}

// Links are the named link profiles; "custom:NAME" names a profile defined elsewhere.
var Links = []string{"loopback", "thunderbolt", "wifi", "ethernet-1g", "ethernet-10g"}

// Dtypes are the compute dtypes a sweep may name.
var Dtypes = []string{"f32", "bf16", "f16"}

// Sweep is a parsed and validated sweep file: a set of run configurations, each run over every
// prompt, Warmup times unmeasured and Repeats times measured.
type Sweep struct {
	// Name names the sweep and its output directory results/<name>/.
	Name        string
	Description string
	// Path is the file the sweep was read from.
	Path string
	// Overrides are the --set key=value assignments applied on top of the file.
	Overrides []string
	Repeats   int
	Warmup    int
	// Timeout bounds one run.
	Timeout time.Duration
	// Hosts is the absolute path of the hosts file, or "" to run every process locally.
	Hosts   string
	Prompts []string

	configs []bench.Config
}

// Configs returns the expanded configurations (without prompts) in run order: one model's
// configurations are adjacent, and within a model those sharing mode, stages, transport, link and
// drafter are adjacent, so an executor can keep an engine loaded between them.
func (s *Sweep) Configs() []bench.Config { return slices.Clone(s.configs) }

// Issue is one problem found in a sweep file.
type Issue struct {
	File   string
	Line   int
	Column int
	// Origin replaces the file position for values given on the command line ("--set k=v").
	Origin string
	Msg    string
}

// String formats the issue as file:line:column: message (or "--set k=v: message").
func (i Issue) String() string {
	switch {
	case i.Origin != "":
		return i.Origin + ": " + i.Msg
	case i.Column > 0:
		return fmt.Sprintf("%s:%d:%d: %s", i.File, i.Line, i.Column, i.Msg)
	case i.Line > 0:
		return fmt.Sprintf("%s:%d: %s", i.File, i.Line, i.Msg)
	default:
		return i.File + ": " + i.Msg
	}
}

// ValidationError lists every problem found in a sweep file. Nothing runs when a sweep has one.
type ValidationError struct {
	Issues []Issue
}

// Error lists the issues one per line, in file order.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Issues))
	for i, is := range e.Issues {
		lines[i] = is.String()
	}
	return strings.Join(lines, "\n")
}

// Load reads, validates and expands the sweep file at path. overrides are "key=value" strings
// (the --set flag): key is a top-level key (repeats, warmup, timeout, name, hosts, prompts,
// prompts_file) or a configuration field. A list value replaces that matrix dimension; a single
// value is forced onto every configuration after expansion. Relative paths in the file
// (prompts_file, hosts) are relative to the file's directory. The error is a *ValidationError
// when the file is invalid.
func Load(path string, overrides ...string) (*Sweep, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load sweep: %w", err)
	}
	return Parse(path, data, overrides...)
}

// Parse is Load for a file already in memory; path names it in messages and anchors its relative
// paths.
func Parse(path string, data []byte, overrides ...string) (*Sweep, error) {
	p := &parser{file: path, dir: filepath.Dir(path), setOrigin: map[*yaml.Node]string{}, forced: map[string]val{}}
	s := p.parse(data, overrides)
	if len(p.issues) > 0 {
		return nil, &ValidationError{Issues: p.sortedIssues()}
	}
	s.Path = path
	s.Overrides = slices.Clone(overrides)
	return s, nil
}

// field is one bench.Config field that sweeps can set, by its YAML key.
type field struct {
	key   string
	index int
	typ   reflect.Type
}

var (
	configFields = func() map[string]field {
		m := map[string]field{}
		t := reflect.TypeFor[bench.Config]()
		for i := range t.NumField() {
			f := t.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if key == "" || key == "-" || key == "prompt" {
				continue
			}
			m[key] = field{key: key, index: i, typ: f.Type}
		}
		return m
	}()
	// dimOrder is the expansion order of matrix keys, outermost first: the model outermost so its
	// weights load once, then the settings that need a new engine, then per-run settings. Keys not
	// listed follow in bench.Config field order.
	dimOrder = []string{"model", "mode", "stages", "split", "transport", "link", "drafter", "draft", "dtype",
		"base_url", "concurrency", "draft_tokens", "draft_confidence", "max_tokens", "temperature", "top_p", "seed"}
	// groupKeys are the settings an executor may need a fresh engine for.
	groupKeys = []string{"model", "mode", "stages", "split", "transport", "link", "drafter", "draft", "dtype", "base_url", "concurrency", "chat"}
	topKeys   = []string{"name", "description", "repeats", "warmup", "prompts", "prompts_file", "matrix", "defaults", "exclude", "include", "timeout", "hosts"}
)

func fieldRank(key string) int {
	if i := slices.Index(dimOrder, key); i >= 0 {
		return i
	}
	return len(dimOrder) + configFields[key].index
}

func sortedFieldKeys() []string {
	keys := make([]string, 0, len(configFields))
	for k := range configFields {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return fieldRank(keys[i]) < fieldRank(keys[j]) })
	return keys
}

// Which fields each mode uses; the rest of these mode-specific fields are cleared.
var (
	pipelineFields = []string{"stages", "split", "transport", "link"}
	specFields     = []string{"drafter", "draft", "draft_tokens", "draft_confidence"}
	openaiFields   = []string{"base_url", "concurrency"}
	modeFields     = map[string][]string{
		"standalone":    nil,
		"pipeline":      pipelineFields,
		"spec":          specFields,
		"pipeline+spec": slices.Concat(pipelineFields, specFields),
		"openai":        openaiFields,
	}
)

func modeSpecific(key string) bool {
	return slices.Contains(pipelineFields, key) || slices.Contains(specFields, key) || slices.Contains(openaiFields, key)
}

func modeUses(mode, key string) bool {
	return !modeSpecific(key) || slices.Contains(modeFields[mode], key)
}

func modesUsing(key string) []string {
	var out []string
	for _, m := range Modes {
		if slices.Contains(modeFields[m], key) {
			out = append(out, m)
		}
	}
	return out
}

// val is one typed value and the node it came from.
type val struct {
	v any
	n *yaml.Node
}

type dim struct {
	key  string
	keyN *yaml.Node
	vals []val
}

type entry struct {
	vals  map[string]val
	keys  []string
	label string // "include[2]"
	node  *yaml.Node
}

type parser struct {
	file      string
	dir       string
	issues    []Issue
	setOrigin map[*yaml.Node]string
	forced    map[string]val
	listSet   map[string]bool // matrix dimensions replaced by --set
	root      *yaml.Node
}

// errorf records an issue at n; the same message at the same place is recorded once, however
// many expanded configurations hit it.
func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	is := Issue{File: p.file, Msg: fmt.Sprintf(format, args...)}
	if o, ok := p.setOrigin[n]; ok {
		is.Origin = o
	} else if n != nil {
		is.Line, is.Column = n.Line, n.Column
	}
	if !slices.Contains(p.issues, is) {
		p.issues = append(p.issues, is)
	}
}

func (p *parser) sortedIssues() []Issue {
	out := slices.Clone(p.issues)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.Origin != "") != (b.Origin != "") {
			return a.Origin != ""
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	return out
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing"
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return strconv.Quote(n.Value)
	}
	return "an unsupported YAML node"
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) parse(data []byte, overrides []string) *Sweep {
	s := &Sweep{Repeats: 1, Timeout: DefaultTimeout}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		msg := err.Error()
		if errors.Is(err, io.EOF) {
			p.issues = append(p.issues, Issue{File: p.file, Msg: "empty sweep file: see experiments/quick.yaml for an example"})
			return s
		}
		is := Issue{File: p.file, Msg: "invalid YAML: " + msg}
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			is.Line, _ = strconv.Atoi(m[1])
			is.Msg = "invalid YAML: " + m[2]
		}
		p.issues = append(p.issues, is)
		return s
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.errorf(&extra, "a sweep file holds one YAML document: remove this second one")
	}
	if len(doc.Content) == 0 {
		p.issues = append(p.issues, Issue{File: p.file, Msg: "empty sweep file: see experiments/quick.yaml for an example"})
		return s
	}
	root := deref(doc.Content[0])
	p.root = root
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "a sweep file is a mapping (name:, matrix:, ...), got %s", describe(root))
		return s
	}
	p.applyOverrides(root, overrides)

	top := map[string]*yaml.Node{}
	topKey := map[string]*yaml.Node{}
	p.eachPair(root, "", func(k, v *yaml.Node) {
		if !slices.Contains(topKeys, k.Value) {
			p.errorf(k, "unknown key %q%s; a sweep file has %s", k.Value, suggest(k.Value, topKeys), strings.Join(topKeys, ", "))
			return
		}
		top[k.Value], topKey[k.Value] = v, k
	})

	s.Name = strings.TrimSuffix(filepath.Base(p.file), filepath.Ext(p.file))
	if n := top["name"]; n != nil {
		if v, ok := p.str(n, "name"); ok {
			if !regexp.MustCompile(`^[A-Za-z0-9._-]+$`).MatchString(v) || strings.Trim(v, ".") == "" {
				p.errorf(n, "name %q may only use letters, digits, '.', '_' and '-': it names the output directory", v)
			}
			s.Name = v
		}
	}
	if n := top["description"]; n != nil {
		s.Description, _ = p.str(n, "description")
	}
	if n := top["repeats"]; n != nil {
		if v, ok := p.int(n, "repeats"); ok {
			if v < 1 {
				p.errorf(n, "repeats must be at least 1, got %d", v)
			}
			s.Repeats = v
		}
	}
	if n := top["warmup"]; n != nil {
		if v, ok := p.int(n, "warmup"); ok {
			if v < 0 {
				p.errorf(n, "warmup must be 0 or more, got %d", v)
			}
			s.Warmup = v
		}
	}
	if n := top["timeout"]; n != nil {
		if v, ok := p.str(n, "timeout"); ok {
			d, err := time.ParseDuration(v)
			switch {
			case err != nil:
				p.errorf(n, "timeout %q is not a duration: write it like 90s, 10m or 1h", v)
			case d <= 0:
				p.errorf(n, "timeout must be positive, got %s", v)
			default:
				s.Timeout = d
			}
		}
	}
	if n := top["hosts"]; n != nil {
		if v, ok := p.str(n, "hosts"); ok {
			s.Hosts = p.path(v)
			if st, err := os.Stat(s.Hosts); err != nil || !st.Mode().IsRegular() {
				p.errorf(n, "hosts file %s not found: give a path relative to the sweep file, or remove hosts to run locally", v)
			}
		}
	}
	s.Prompts = p.prompts(root, top, topKey)

	var dims []dim
	if n := top["matrix"]; n != nil {
		dims = p.matrix(n)
	}
	defaults := map[string]val{}
	if n := top["defaults"]; n != nil {
		defaults = p.defaults(n, dims)
	}
	var excludes, includes []entry
	if n := top["exclude"]; n != nil {
		excludes = p.entries(n, "exclude")
		for _, e := range excludes {
			for _, k := range e.keys {
				if !slices.ContainsFunc(dims, func(d dim) bool { return d.key == k }) {
					p.errorf(e.vals[k].n, "%s names %s, which is not a matrix key: exclude can only name matrix keys (%s)", e.label, k, dimKeys(dims))
				}
			}
		}
	}
	if n := top["include"]; n != nil {
		includes = p.entries(n, "include")
	}
	if len(p.issues) > 0 {
		return s
	}
	s.configs = p.expand(dims, defaults, excludes, includes, len(overrides) > 0)
	return s
}

func dimKeys(dims []dim) string {
	if len(dims) == 0 {
		return "the matrix is empty"
	}
	keys := make([]string, len(dims))
	for i, d := range dims {
		keys[i] = d.key
	}
	return strings.Join(keys, ", ")
}

// eachPair walks a mapping, reporting duplicate and non-scalar keys.
func (p *parser) eachPair(m *yaml.Node, where string, fn func(k, v *yaml.Node)) {
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := deref(m.Content[i]), deref(m.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, "%skeys must be plain names, got %s", where, describe(k))
			continue
		}
		if k.Value == "<<" {
			p.errorf(k, "%smerge keys (<<) are not supported: write the keys out", where)
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			p.errorf(k, "%skey %q appears twice (first at line %d): keep one", where, k.Value, prev.Line)
			continue
		}
		seen[k.Value] = k
		fn(k, v)
	}
}

func (p *parser) path(v string) string {
	if !filepath.IsAbs(v) {
		v = filepath.Join(p.dir, v)
	}
	if abs, err := filepath.Abs(v); err == nil {
		return abs
	}
	return v
}

func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errorf(n, "%s: want a string, got %s", what, describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) int(n *yaml.Node, what string) (int, bool) {
	var v int
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		p.errorf(n, "%s: want an integer, got %s", what, describe(n))
		return 0, false
	}
	return v, true
}

func (p *parser) prompts(root *yaml.Node, top, topKey map[string]*yaml.Node) []string {
	inline, file := top["prompts"], top["prompts_file"]
	switch {
	case inline != nil && file != nil:
		p.errorf(topKey["prompts_file"], "give prompts or prompts_file, not both")
		return nil
	case inline == nil && file == nil:
		p.errorf(root, "no prompts: add prompts: (a list of strings) or prompts_file: (a text file, one prompt per line)")
		return nil
	case file != nil:
		name, ok := p.str(file, "prompts_file")
		if !ok {
			return nil
		}
		out, err := readPrompts(p.path(name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			p.errorf(file, "prompts_file %s not found: give a path relative to the sweep file", name)
		case err != nil:
			p.errorf(file, "prompts_file %s: %v", name, err)
		}
		return out
	}
	var list []*yaml.Node
	switch inline.Kind {
	case yaml.ScalarNode:
		list = []*yaml.Node{inline}
	case yaml.SequenceNode:
		list = inline.Content
	default:
		p.errorf(inline, "prompts: want a list of strings, got %s", describe(inline))
		return nil
	}
	if len(list) == 0 {
		p.errorf(inline, "prompts is an empty list: give at least one prompt")
	}
	var out []string
	for _, n := range list {
		n = deref(n)
		if v, ok := p.str(n, "prompts"); ok {
			if strings.TrimSpace(v) == "" {
				p.errorf(n, "prompts: empty prompt")
				continue
			}
			out = append(out, v)
		}
	}
	return out
}

// readPrompts reads a prompts file: a YAML list of strings (.yaml, .yml, .json), or plain text with
// one prompt per line where blank lines and lines starting with # are skipped.
func readPrompts(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml", ".json":
		if err := yaml.Unmarshal(data, &out); err != nil {
			return nil, fmt.Errorf("want a list of strings: %v", err)
		}
	default:
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no prompts in the file")
	}
	return out, nil
}

// value decodes a scalar node into the type of a bench.Config field and checks its range.
func (p *parser) value(key string, n *yaml.Node, where string) (val, bool) {
	f := configFields[key]
	if n.Kind != yaml.ScalarNode {
		p.errorf(n, "%s: want a single value, got %s", where, describe(n))
		return val{}, false
	}
	if n.Tag == "!!null" {
		p.errorf(n, "%s: no value: give one or remove the key", where)
		return val{}, false
	}
	var v any
	switch f.typ.Kind() {
	case reflect.String:
		v = n.Value
	case reflect.Bool:
		var b bool
		if n.Tag != "!!bool" || n.Decode(&b) != nil {
			p.errorf(n, "%s: want true or false, got %s", where, describe(n))
			return val{}, false
		}
		v = b
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		x := reflect.New(f.typ)
		if n.Tag != "!!int" || n.Decode(x.Interface()) != nil {
			p.errorf(n, "%s: want an integer, got %s", where, describe(n))
			return val{}, false
		}
		v = x.Elem().Interface()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		x := reflect.New(f.typ)
		if n.Tag != "!!int" || n.Decode(x.Interface()) != nil {
			p.errorf(n, "%s: want a non-negative integer, got %s", where, describe(n))
			return val{}, false
		}
		v = x.Elem().Interface()
	case reflect.Float32, reflect.Float64:
		x := reflect.New(f.typ)
		if (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(x.Interface()) != nil {
			p.errorf(n, "%s: want a number, got %s", where, describe(n))
			return val{}, false
		}
		v = x.Elem().Interface()
	default:
		p.errorf(n, "%s: sweeps cannot set %s (%s)", where, key, f.typ)
		return val{}, false
	}
	if msg := checkValue(key, v); msg != "" {
		p.errorf(n, "%s: %s", where, msg)
		return val{}, false
	}
	return val{v: v, n: n}, true
}

// checkValue checks one field's value on its own; combinations are checked after expansion.
func checkValue(key string, v any) string {
	switch key {
	case "mode":
		m := fmt.Sprint(v)
		if !slices.Contains(Modes, m) {
			return fmt.Sprintf("unknown mode %q%s; modes are %s", m, suggest(m, Modes), strings.Join(Modes, ", "))
		}
	case "link":
		l := fmt.Sprint(v)
		if name, ok := strings.CutPrefix(l, "custom:"); ok {
			if name == "" {
				return `custom link needs a name after "custom:" (custom:NAME)`
			}
			return ""
		}
		if !slices.Contains(Links, l) {
			return fmt.Sprintf("unknown link %q%s; links are %s and custom:NAME", l, suggest(l, Links), strings.Join(Links, ", "))
		}
	case "dtype":
		d := fmt.Sprint(v)
		if !slices.Contains(Dtypes, d) {
			return fmt.Sprintf("unknown dtype %q%s; dtypes are %s", d, suggest(d, Dtypes), strings.Join(Dtypes, ", "))
		}
	case "stages":
		if asInt(v) < 1 {
			return fmt.Sprintf("stages must be at least 1, got %d", v)
		}
	case "max_tokens":
		if asInt(v) < 1 {
			return fmt.Sprintf("max_tokens must be at least 1, got %d", v)
		}
	case "draft_tokens":
		if asInt(v) < 1 {
			return fmt.Sprintf("draft_tokens must be at least 1 (tokens drafted per step), got %d", v)
		}
	case "draft_confidence":
		if x := asFloat(v); !engines.ValidDraftConfidence(x) {
			return fmt.Sprintf("draft_confidence must be 0 (whole dflash blocks) up to below 1, got %g", x)
		}
	case "concurrency":
		if asInt(v) < 1 {
			return fmt.Sprintf("concurrency must be at least 1, got %d", v)
		}
	case "temperature":
		if x := asFloat(v); x < 0 {
			return fmt.Sprintf("temperature must be 0 (greedy) or more, got %g", x)
		}
	case "top_p":
		if x := asFloat(v); x <= 0 || x > 1 {
			return fmt.Sprintf("top_p must be in (0, 1], got %g", x)
		}
	}
	if s, ok := v.(string); ok && strings.TrimSpace(s) == "" {
		return "empty value: give one or remove the key"
	}
	return ""
}

func (p *parser) fieldKey(k *yaml.Node, where string) bool {
	if k.Value == "prompt" {
		p.errorf(k, "%sprompt cannot be set here: list prompts under the top-level prompts key", where)
		return false
	}
	if _, ok := configFields[k.Value]; !ok {
		keys := sortedFieldKeys()
		p.errorf(k, "%sunknown key %q%s; run settings are %s", where, k.Value, suggest(k.Value, keys), strings.Join(keys, ", "))
		return false
	}
	return true
}

func (p *parser) matrix(n *yaml.Node) []dim {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "matrix: want a mapping of run settings to values or lists, got %s", describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(n, "matrix is empty: give at least one setting (model: ...) or remove it")
		return nil
	}
	var dims []dim
	p.eachPair(n, "matrix: ", func(k, v *yaml.Node) {
		if !p.fieldKey(k, "matrix: ") {
			return
		}
		where := "matrix." + k.Value
		d := dim{key: k.Value, keyN: k}
		var items []*yaml.Node
		switch v.Kind {
		case yaml.ScalarNode:
			items = []*yaml.Node{v}
		case yaml.SequenceNode:
			if len(v.Content) == 0 {
				p.errorf(v, "%s is an empty list: give at least one value or remove the key", where)
				return
			}
			items = v.Content
		default:
			p.errorf(v, "%s: want a value or a list of values, got %s", where, describe(v))
			return
		}
		seen := map[any]bool{}
		for _, it := range items {
			it = deref(it)
			x, ok := p.value(k.Value, it, where)
			if !ok {
				continue
			}
			if seen[x.v] {
				p.errorf(it, "%s lists %v twice: remove one", where, x.v)
				continue
			}
			seen[x.v] = true
			d.vals = append(d.vals, x)
		}
		if len(d.vals) > 0 {
			dims = append(dims, d)
		}
	})
	sort.SliceStable(dims, func(i, j int) bool { return fieldRank(dims[i].key) < fieldRank(dims[j].key) })
	return dims
}

func (p *parser) defaults(n *yaml.Node, dims []dim) map[string]val {
	out := map[string]val{}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "defaults: want a mapping of run settings to values, got %s", describe(n))
		return out
	}
	p.eachPair(n, "defaults: ", func(k, v *yaml.Node) {
		if !p.fieldKey(k, "defaults: ") {
			return
		}
		if slices.ContainsFunc(dims, func(d dim) bool { return d.key == k.Value }) {
			p.errorf(k, "%s is set in both matrix and defaults: keep one", k.Value)
			return
		}
		if v.Kind == yaml.SequenceNode {
			p.errorf(v, "defaults.%s: want a single value; to sweep over several, move it under matrix", k.Value)
			return
		}
		if x, ok := p.value(k.Value, v, "defaults."+k.Value); ok {
			out[k.Value] = x
		}
	})
	return out
}

func (p *parser) entries(n *yaml.Node, what string) []entry {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s: want a list of partial matrix assignments (- mode: spec), got %s", what, describe(n))
		return nil
	}
	var out []entry
	for i, it := range n.Content {
		it = deref(it)
		label := fmt.Sprintf("%s[%d]", what, i)
		if it.Kind != yaml.MappingNode {
			p.errorf(it, "%s: want a mapping of run settings to values, got %s", label, describe(it))
			continue
		}
		if len(it.Content) == 0 {
			p.errorf(it, "%s is empty: give the settings it matches or remove it", label)
			continue
		}
		e := entry{vals: map[string]val{}, label: label, node: it}
		p.eachPair(it, label+": ", func(k, v *yaml.Node) {
			if !p.fieldKey(k, label+": ") {
				return
			}
			if x, ok := p.value(k.Value, v, label+"."+k.Value); ok {
				e.vals[k.Value] = x
				e.keys = append(e.keys, k.Value)
			}
		})
		out = append(out, e)
	}
	return out
}

// asInt and asFloat read a decoded value whatever its numeric kind, so a change of a bench.Config
// field's type cannot turn a validation into a panic.
func asInt(v any) int64 {
	rv := reflect.ValueOf(v)
	switch {
	case rv.CanInt():
		return rv.Int()
	case rv.CanUint():
		return int64(rv.Uint())
	case rv.CanFloat():
		return int64(rv.Float())
	}
	return 0
}

func asFloat(v any) float64 {
	rv := reflect.ValueOf(v)
	switch {
	case rv.CanFloat():
		return rv.Float()
	case rv.CanInt():
		return float64(rv.Int())
	case rv.CanUint():
		return float64(rv.Uint())
	}
	return 0
}

// suggest returns a "did you mean" hint for a misspelt name.
func suggest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
