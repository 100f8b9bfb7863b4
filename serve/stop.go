package serve

import "strings"

// StopScanner finds stop sequences in text that arrives in pieces, wherever the piece boundaries
// fall. It holds back the longest tail of the text seen so far that could still begin a stop
// sequence, so a client never receives text that a later piece reveals to be part of one. It is
// pure and for one goroutine.
type StopScanner struct {
	stops []string
	held  string
	done  bool
}

// NewStopScanner watches for any of stops (empty strings are ignored).
func NewStopScanner(stops []string) *StopScanner {
	s := &StopScanner{}
	for _, t := range stops {
		if t != "" {
			s.stops = append(s.stops, t)
		}
	}
	return s
}

// Push adds text and returns what may be sent now. When a stop sequence is complete, stopped is
// true, out is the text before it, and the scanner ignores further input.
func (s *StopScanner) Push(text string) (out string, stopped bool) {
	if s.done {
		return "", true
	}
	if len(s.stops) == 0 {
		return text, false
	}
	s.held += text
	first := -1
	for _, t := range s.stops {
		if i := strings.Index(s.held, t); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	if first >= 0 {
		out, s.held, s.done = s.held[:first], "", true
		return out, true
	}
	keep := 0
	for _, t := range s.stops {
		keep = max(keep, overlap(s.held, t))
	}
	out, s.held = s.held[:len(s.held)-keep], s.held[len(s.held)-keep:]
	return out, false
}

// Flush returns the held-back text at the end of generation: no stop sequence can complete now.
func (s *StopScanner) Flush() string {
	out := s.held
	s.held = ""
	return out
}

// overlap is the length of the longest proper prefix of stop that text ends with.
func overlap(text, stop string) int {
	for n := min(len(text), len(stop)-1); n > 0; n-- {
		if strings.HasSuffix(text, stop[:n]) {
			return n
		}
	}
	return 0
}
