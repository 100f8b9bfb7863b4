package experiments

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/hippo-bench/hippo/bench"
)

// applyOverrides edits the document for --set key=value. Top-level keys and list values for run
// settings replace nodes in the document (a list becomes that matrix dimension); single values for
// run settings are kept aside and forced onto every configuration after expansion.
func (p *parser) applyOverrides(root *yaml.Node, overrides []string) {
	p.listSet = map[string]bool{}
	for _, o := range overrides {
		origin := "--set " + o
		k, v, ok := strings.Cut(o, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			p.issues = append(p.issues, Issue{Origin: origin, Msg: "want key=value, e.g. --set max_tokens=16"})
			continue
		}
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(v), &doc); err != nil {
			p.issues = append(p.issues, Issue{Origin: origin, Msg: "value is not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")})
			continue
		}
		vn := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
		if len(doc.Content) > 0 {
			vn = doc.Content[0]
		}
		p.mark(vn, origin)
		switch {
		case k == "matrix" || k == "defaults" || k == "exclude" || k == "include":
			p.issues = append(p.issues, Issue{Origin: origin, Msg: k + " cannot be replaced with --set: set single run settings instead, e.g. --set mode=[standalone,pipeline]"})
		case slices.Contains(topKeys, k):
			setKey(root, k, vn)
			switch k {
			case "prompts":
				deleteKey(root, "prompts_file")
			case "prompts_file":
				deleteKey(root, "prompts")
			}
		case k == "prompt":
			p.issues = append(p.issues, Issue{Origin: origin, Msg: "prompts are set with --set prompts=TEXT (or a list)"})
		case configFields[k].key != "":
			if vn.Kind == yaml.SequenceNode {
				setKey(mapping(root, "matrix"), k, vn)
				if d := getKey(root, "defaults"); d != nil && d.Kind == yaml.MappingNode {
					deleteKey(d, k)
				}
				p.listSet[k] = true
				continue
			}
			if x, ok := p.value(k, vn, k); ok {
				p.forced[k] = x
			}
		default:
			known := slices.Concat(topKeys, sortedFieldKeys())
			p.issues = append(p.issues, Issue{Origin: origin, Msg: fmt.Sprintf("unknown key %q%s", k, suggest(k, known))})
		}
	}
}

func (p *parser) mark(n *yaml.Node, origin string) {
	n.Line, n.Column = 0, 0
	p.setOrigin[n] = origin
	for _, c := range n.Content {
		p.mark(c, origin)
	}
}

func getKey(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return deref(m.Content[i+1])
		}
	}
	return nil
}

func setKey(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key, Line: v.Line, Column: v.Column}, v)
}

func deleteKey(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = slices.Delete(m.Content, i, i+2)
			return
		}
	}
}

// mapping returns the mapping under key, creating it when absent.
func mapping(root *yaml.Node, key string) *yaml.Node {
	if m := getKey(root, key); m != nil && m.Kind == yaml.MappingNode {
		return m
	}
	m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	setKey(root, key, m)
	return m
}

// combo is one configuration during expansion: values by key, and the include entries that
// contributed to it.
type combo struct {
	vals    map[string]val
	entries []*entry
	// own is the include entry that agreed with no combination and became this one.
	own *entry
}

func (c combo) clone() combo {
	return combo{vals: maps.Clone(c.vals), entries: slices.Clone(c.entries), own: c.own}
}

// expand builds the configurations the way GitHub Actions builds a job matrix: the cross product
// of the matrix, minus every combination matching an exclude entry, then each include entry is
// merged into every remaining combination whose matrix values it agrees with (adding its other
// keys), or becomes a combination of its own when it agrees with none (taking the matrix keys that
// have a single value). Single --set values are
// forced last and defaults fill what is unset. Settings a mode does not use are cleared, and
// configurations that become identical are merged.
func (p *parser) expand(dims []dim, defaults map[string]val, excludes, includes []entry, overridden bool) []bench.Config {
	var combos []combo
	if len(dims) > 0 {
		combos = []combo{{vals: map[string]val{}}}
		for _, d := range dims {
			var next []combo
			for _, c := range combos {
				for _, v := range d.vals {
					c2 := c.clone()
					c2.vals[d.key] = v
					next = append(next, c2)
				}
			}
			combos = next
		}
	}
	combos = slices.DeleteFunc(combos, func(c combo) bool {
		return slices.ContainsFunc(excludes, func(e entry) bool {
			for _, k := range e.keys {
				if c.vals[k].v != e.vals[k].v {
					return false
				}
			}
			return true
		})
	})
	isDim := map[string]bool{}
	for _, d := range dims {
		isDim[d.key] = true
	}
	base := len(combos)
	for i := range includes {
		e := &includes[i]
		matched := false
		for j := range base {
			c := &combos[j]
			agrees := true
			for _, k := range e.keys {
				if isDim[k] && c.vals[k].v != e.vals[k].v {
					agrees = false
					break
				}
			}
			if !agrees {
				continue
			}
			matched = true
			for _, k := range e.keys {
				if !isDim[k] {
					c.vals[k] = e.vals[k]
				}
			}
			c.entries = append(c.entries, e)
		}
		if !matched {
			// A new configuration gets the include's keys plus every single-valued matrix key:
			// those act as defaults ("matrix: {model: m}" applies to everything).
			c := combo{vals: maps.Clone(e.vals), entries: []*entry{e}, own: e}
			for _, d := range dims {
				if _, ok := c.vals[d.key]; !ok && len(d.vals) == 1 {
					c.vals[d.key] = d.vals[0]
				}
			}
			combos = append(combos, c)
		}
	}
	if len(dims) == 0 && len(includes) == 0 {
		combos = []combo{{vals: map[string]val{}}}
	}
	if len(combos) == 0 {
		p.errorf(p.root, "the matrix expands to no configuration: every combination is excluded")
		return nil
	}

	var configs []bench.Config
	seen := map[string]bool{}
	used := map[string]bool{} // mode-specific keys some configuration uses
	for _, c := range combos {
		m := maps.Clone(defaults)
		maps.Copy(m, c.vals)
		maps.Copy(m, p.forced)
		mode := "standalone"
		if v, ok := m["mode"]; ok {
			mode = fmt.Sprint(v.v)
		}
		p.checkEntries(c.entries)
		p.checkOwn(c.own, mode, dims)
		p.checkCombo(mode, m)
		for k := range m {
			if modeUses(mode, k) {
				used[k] = true
			}
		}
		cfg := build(mode, m)
		key := configJSON(cfg)
		if seen[key] {
			continue
		}
		seen[key] = true
		configs = append(configs, cfg)
	}
	if !overridden {
		p.checkUnused(dims, defaults, used)
	}
	return order(configs)
}

// checkEntries flags an include entry that names a mode together with a setting that mode does not
// use (mode: standalone with stages: 2): a contradiction within one line of intent, not a side
// effect of the cross product.
func (p *parser) checkEntries(entries []*entry) {
	for _, e := range entries {
		mv, ok := e.vals["mode"]
		if !ok {
			continue
		}
		mode := fmt.Sprint(mv.v)
		for _, k := range e.keys {
			if !modeUses(mode, k) {
				p.errorf(e.vals[k].n, "%s: mode %s does not use %s (only %s do): remove %s from this entry or change its mode",
					e.label, mode, k, strings.Join(modesUsing(k), ", "), k)
			}
		}
	}
	if mv, ok := p.forced["mode"]; ok {
		mode := fmt.Sprint(mv.v)
		for k, v := range p.forced {
			if !modeUses(mode, k) {
				p.errorf(v.n, "mode %s does not use %s (only %s do)", mode, k, strings.Join(modesUsing(k), ", "))
			}
		}
	}
}

// checkOwn flags an include entry that agreed with no combination of the matrix and so became a
// configuration of its own, in a mode that ignores some of its settings: {drafter: model, draft:
// DIR} beside matrix.drafter [dflash, lookup] would otherwise silently become a standalone run.
func (p *parser) checkOwn(e *entry, mode string, dims []dim) {
	if e == nil {
		return
	}
	if _, ok := e.vals["mode"]; ok {
		return // checkEntries judges an entry that names its mode
	}
	for _, k := range e.keys {
		if modeUses(mode, k) {
			continue
		}
		hint := "name its mode (and the settings that mode needs) in the entry"
		for _, d := range dims {
			if d.key == k {
				hint = fmt.Sprintf("add %v to matrix.%s so that the entry merges into those configurations, or %s", e.vals[k].v, k, hint)
			}
		}
		p.errorf(e.vals[k].n, "%s agrees with no configuration of the matrix, so it would run on its own in mode %s, which does not use %s (only %s do): %s",
			e.label, mode, k, strings.Join(modesUsing(k), ", "), hint)
	}
}

// checkCombo checks what one configuration needs as a whole.
func (p *parser) checkCombo(mode string, m map[string]val) {
	anchor := p.root
	if v, ok := m["mode"]; ok {
		anchor = v.n
	}
	if _, ok := m["model"]; !ok {
		p.errorf(p.root, "no model: set model (a checkpoint directory or synth:PRESET) in the matrix or defaults")
	}
	if mode == "pipeline" || mode == "pipeline+spec" {
		st, ok := m["stages"]
		switch {
		case !ok:
			p.errorf(anchor, "mode %s needs stages >= 2: set stages (e.g. stages: 2) in the matrix or defaults", mode)
		case asInt(st.v) < 2:
			p.errorf(st.n, "mode %s needs stages >= 2, got %d: use 2 or more, or exclude {mode: %s, stages: %d} (standalone and spec ignore stages)", mode, st.v, mode, st.v)
		}
	}
	if mode == "spec" || mode == "pipeline+spec" {
		d, ok := m["drafter"]
		switch {
		case !ok:
			p.errorf(anchor, "mode %s needs a drafter: set drafter (lookup, model, ...) in the matrix, defaults or an include entry", mode)
		case fmt.Sprint(d.v) == "model":
			if _, ok := m["draft"]; !ok {
				p.errorf(d.n, "drafter model needs draft, the draft model (a checkpoint directory or synth:PRESET): set draft in defaults or an include entry")
			}
		}
		if g, ok := m["draft_confidence"]; ok && asFloat(g.v) != 0 {
			if d, ok := m["drafter"]; ok && fmt.Sprint(d.v) != "dflash" {
				p.errorf(g.n, "draft_confidence %v cuts dflash drafts only, and drafter %v takes none: exclude {drafter: %v, draft_confidence: %v}, or set it in an include entry for dflash", g.v, d.v, d.v, g.v)
			}
		}
	}
	if mode == "openai" {
		if _, ok := m["base_url"]; !ok {
			p.errorf(anchor, "mode openai needs base_url, the server to measure (e.g. base_url: http://127.0.0.1:8080/v1): set it in defaults")
		}
	}
}

// checkUnused flags matrix dimensions and defaults that no configuration uses, which is almost
// always a mistake (a link sweep over standalone runs only).
func (p *parser) checkUnused(dims []dim, defaults map[string]val, used map[string]bool) {
	msg := func(where, key string) string {
		return fmt.Sprintf("%s has no effect: only %s use %s, and no configuration of this sweep runs in those modes: remove it or add one of those modes",
			where, strings.Join(modesUsing(key), " and "), key)
	}
	for _, d := range dims {
		if modeSpecific(d.key) && !used[d.key] && !p.listSet[d.key] {
			p.errorf(d.keyN, "%s", msg("matrix."+d.key, d.key))
		}
	}
	for k, v := range defaults {
		if modeSpecific(k) && !used[k] {
			p.errorf(v.n, "%s", msg("defaults."+k, k))
		}
	}
}

// build turns values into a normalized bench.Config: settings the mode does not use are cleared and
// pipeline modes default to the loopback link.
func build(mode string, m map[string]val) bench.Config {
	var c bench.Config
	rv := reflect.ValueOf(&c).Elem()
	for k, v := range m {
		if !modeUses(mode, k) {
			continue
		}
		rv.Field(configFields[k].index).Set(reflect.ValueOf(v.v))
	}
	c.Mode = mode
	if (mode == "pipeline" || mode == "pipeline+spec") && c.Link == "" {
		c.Link = "loopback"
	}
	return c
}

func configJSON(c bench.Config) string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // bench.Config holds only plain values
	}
	return string(b)
}

// groupKey is what an executor may need a new engine for. Standalone and spec configurations of
// one model share the target's engine (a launch.Loader swaps only the drafter), so they form one
// group, and the plan alternates them prompt by prompt: a speedup is then a ratio of runs made
// side by side, not of blocks run minutes apart on a machine whose load drifts.
func groupKey(c bench.Config) string {
	if c.Mode == "" || c.Mode == "standalone" || c.Mode == "spec" {
		c.Mode, c.Drafter, c.Draft = "standalone", "", ""
	}
	rv := reflect.ValueOf(c)
	var b strings.Builder
	for _, k := range groupKeys {
		f, ok := configFields[k]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "%s=%v;", k, rv.Field(f.index).Interface())
	}
	return b.String()
}

// order sorts configurations stably so that each model's configurations are adjacent (weights load
// once) and, within a model, configurations sharing an engine are adjacent.
func order(configs []bench.Config) []bench.Config {
	modelRank := map[string]int{}
	groupRank := map[string]int{}
	for _, c := range configs {
		if _, ok := modelRank[c.Model]; !ok {
			modelRank[c.Model] = len(modelRank)
		}
		if g := groupKey(c); groupRank[g] == 0 {
			groupRank[g] = len(groupRank) + 1
		}
	}
	sort.SliceStable(configs, func(i, j int) bool {
		a, b := configs[i], configs[j]
		if modelRank[a.Model] != modelRank[b.Model] {
			return modelRank[a.Model] < modelRank[b.Model]
		}
		return groupRank[groupKey(a)] < groupRank[groupKey(b)]
	})
	return configs
}

// Flatten renders the expanded sweep as a self-contained sweep file: no matrix, one include entry
// per configuration, prompts inline and the hosts path absolute. Loading it gives the same
// configurations in the same order, which is what --resume relies on when the original file is
// gone or has changed.
func (s *Sweep) Flatten() ([]byte, error) {
	str := func(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }
	root := &yaml.Node{Kind: yaml.MappingNode}
	add := func(k string, v *yaml.Node) { root.Content = append(root.Content, str(k), v) }
	add("name", str(s.Name))
	if s.Description != "" {
		add("description", str(s.Description))
	}
	add("repeats", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: fmt.Sprint(s.Repeats)})
	add("warmup", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: fmt.Sprint(s.Warmup)})
	add("timeout", str(s.Timeout.String()))
	if s.Hosts != "" {
		add("hosts", str(s.Hosts))
	}
	prompts := &yaml.Node{Kind: yaml.SequenceNode}
	for _, pr := range s.Prompts {
		prompts.Content = append(prompts.Content, str(pr))
	}
	add("prompts", prompts)
	include := &yaml.Node{Kind: yaml.SequenceNode}
	keys := sortedFieldKeys()
	for _, c := range s.configs {
		m := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		rv := reflect.ValueOf(c)
		for _, k := range keys {
			fv := rv.Field(configFields[k].index)
			if fv.IsZero() && k != "mode" {
				continue
			}
			var n yaml.Node
			if err := n.Encode(fv.Interface()); err != nil {
				return nil, fmt.Errorf("flatten %s: %w", k, err)
			}
			m.Content = append(m.Content, str(k), &n)
		}
		include.Content = append(include.Content, m)
	}
	add("include", include)
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}
	header := fmt.Sprintf("# Flattened from %s", s.Path)
	if len(s.Overrides) > 0 {
		header += " with --set " + strings.Join(s.Overrides, " --set ")
	}
	doc.HeadComment = header + ".\n# `hippo sweep --resume DIR` reads this file when no sweep file is given."
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("flatten sweep: %w", err)
	}
	return out, nil
}
