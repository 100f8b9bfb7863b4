package tokenizer

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// parityModels are the tokenizers compared against the reference.
var parityModels = append(slices.Clone(models), flaggedModel)

// chatCase is a conversation rendered by both chat template implementations.
type chatCase struct {
	name     string
	msgs     []Message
	genStart bool
}

var chatCases = []chatCase{
	{name: "system user", msgs: []Message{{"system", "You are terse."}, {"user", "Hi there!"}}, genStart: true},
	{name: "user only", msgs: []Message{{"user", "What is 2+2?"}}, genStart: true},
	{name: "user only no prompt", msgs: []Message{{"user", "What is 2+2?"}}, genStart: false},
	{name: "multi turn", msgs: []Message{
		{"system", "Answer in French."}, {"user", "Hello"}, {"assistant", "Bonjour !"}, {"user", "Thanks"},
	}, genStart: true},
	{name: "ends with assistant", msgs: []Message{{"user", "Say hi"}, {"assistant", "hi"}}, genStart: false},
	{name: "thinking and padding", msgs: []Message{
		{"user", "  Why?\n"}, {"assistant", "<think>\nBecause.\n</think>\n\nIt is so."}, {"user", "ok 👍 <bos>"},
	}, genStart: true},
}

// reference holds what the reference implementation said for one model.
type reference struct {
	name   string
	texts  []string // encoded: corpus lines, then multi-line texts
	nLines int
	decode [][]int // decoded id lists
	refResult
}

var (
	refOnce sync.Once
	refs    []*reference
)

// references runs the reference once per test binary for every parity model.
func references(tb testing.TB) []*reference {
	tb.Helper()
	refOnce.Do(func() {
		lines, texts := corpus(tb)
		var jobs []refJob
		for _, name := range parityModels {
			tok := loadModel(tb, name)
			job := refJob{Dir: dirOf(tb, name), Texts: slices.Concat(lines, texts), Pre: true, Decode: randomIDs(tok, 400)}
			if name != flaggedModel {
				for _, c := range chatCases {
					var msgs []map[string]string
					for _, m := range c.msgs {
						msgs = append(msgs, map[string]string{"role": m.Role, "content": m.Content})
					}
					job.Chats = append(job.Chats, refChat{Messages: msgs, AddGenerationPrompt: c.genStart})
				}
			}
			jobs = append(jobs, job)
		}
		results := runReference(tb, jobs)
		for i, job := range jobs {
			refs = append(refs, &reference{
				name: parityModels[i], texts: job.Texts, nLines: len(lines), decode: job.Decode, refResult: results[i],
			})
		}
	})
	if refs == nil {
		tb.Fatal("reference run failed earlier")
	}
	return refs
}

// randomIDs returns n deterministic id lists that mix ordinary, special, byte and
// out-of-vocab ids, to check decoding of sequences no encoder produces (split chars,
// stray continuation bytes, special tokens between bytes).
func randomIDs(tok *Tokenizer, n int) [][]int {
	rng := rand.New(rand.NewPCG(3, 4))
	var bytesIDs, specialIDs []int
	for id, s := range tok.tokens {
		if tok.kinds[id] == tokenNone {
			continue
		}
		if tok.special[id] || tok.kinds[id] == tokenAdded && rng.IntN(8) == 0 {
			specialIDs = append(specialIDs, id)
		}
		if _, ok := fallbackByte(s); ok || tok.model.byteLevel && len([]rune(s)) == 1 {
			bytesIDs = append(bytesIDs, id)
		}
	}
	out := make([][]int, n)
	for i := range out {
		for range 1 + rng.IntN(12) {
			var id int
			switch k := rng.IntN(10); {
			case k < 4:
				id = bytesIDs[rng.IntN(len(bytesIDs))]
			case k < 5:
				id = specialIDs[rng.IntN(len(specialIDs))]
			case k < 6:
				id = tok.VocabSize() + rng.IntN(10)
			default:
				id = rng.IntN(tok.VocabSize())
			}
			out[i] = append(out[i], id)
		}
	}
	return out
}

// TestParity compares Encode and Decode with the tokenizers library on the corpus.
func TestParity(t *testing.T) {
	for _, ref := range references(t) {
		t.Run(ref.name, func(t *testing.T) {
			tok := loadModel(t, ref.name)
			var bad, badDec int
			for i, text := range ref.texts {
				kind := "line"
				if i >= ref.nLines {
					kind = "text"
				}
				got := tok.Encode(text, true)
				if want := ref.IDs[i]; !slices.Equal(got, want) {
					if bad++; bad <= 10 {
						t.Errorf("%s %d: Encode(%q) =\n%v\nwant\n%v\nfirst difference at %d",
							kind, i, shorten(text), shortenIDs(got), shortenIDs(want), firstDiff(got, want))
					}
				}
				if got, want := tok.Decode(ref.IDs[i], false), ref.Decoded[i]; got != want {
					if badDec++; badDec <= 10 {
						t.Errorf("%s %d: Decode(ids of %q, false) = %q; want %q", kind, i, shorten(text), shorten(got), shorten(want))
					}
				}
				if got, want := tok.Decode(ref.IDs[i], true), ref.DecodedSkip[i]; got != want {
					if badDec++; badDec <= 10 {
						t.Errorf("%s %d: Decode(ids of %q, true) = %q; want %q", kind, i, shorten(text), shorten(got), shorten(want))
					}
				}
			}
			if bad+badDec > 0 {
				t.Errorf("%d of %d encodings and %d decodings differ", bad, len(ref.texts), badDec)
			}
			t.Logf("%d lines and %d multi-line texts compared", ref.nLines, len(ref.texts)-ref.nLines)
		})
	}
}

// TestPreTokenizeParity compares the words of the normalizer and pre-tokenizer with the
// library's, which catches split differences that happen to give the same ids.
func TestPreTokenizeParity(t *testing.T) {
	for _, ref := range references(t) {
		t.Run(ref.name, func(t *testing.T) {
			tok := loadModel(t, ref.name)
			bad := 0
			for i, text := range ref.texts {
				got := tok.words(text)
				if want := ref.Pretokens[i]; !slices.Equal(got, want) {
					if bad++; bad <= 10 {
						t.Errorf("words(%q) = %q; want %q", shorten(text), got, want)
					}
				}
			}
		})
	}
}

// words returns the normalized, pre-tokenized words of text in the library's form
// (byte-level mapped where the pre-tokenizer is ByteLevel), ignoring added tokens.
func (t *Tokenizer) words(text string) []string {
	if t.normalize != nil {
		text = t.normalize(text)
	}
	spans := []span{{0, len(text)}}
	for _, s := range t.pre.splits {
		spans = slices.Clone(s.split(text, spans, new(scratch)))
	}
	var out []string
	for _, sp := range spans {
		w := text[sp.start:sp.end]
		if t.pre.byteLevel {
			w = string(appendByteLevel(nil, w))
		}
		out = append(out, w)
	}
	return out
}

// TestDecodeParity compares Decode with the library on id lists no encoder would produce.
func TestDecodeParity(t *testing.T) {
	for _, ref := range references(t) {
		t.Run(ref.name, func(t *testing.T) {
			tok := loadModel(t, ref.name)
			bad := 0
			for i, ids := range ref.decode {
				for _, skip := range []bool{false, true} {
					want := ref.Decode[i]
					if skip {
						want = ref.DecodeSkip[i]
					}
					if got := tok.Decode(ids, skip); got != want {
						if bad++; bad <= 10 {
							t.Errorf("Decode(%v, %v) = %q; want %q", ids, skip, got, want)
						}
					}
				}
			}
		})
	}
}

// TestChatTemplate compares ApplyChatTemplate with transformers' apply_chat_template.
func TestChatTemplate(t *testing.T) {
	for _, ref := range references(t) {
		if ref.name == flaggedModel {
			continue
		}
		t.Run(ref.name, func(t *testing.T) {
			tok := loadModel(t, ref.name)
			for i, c := range chatCases {
				got, err := tok.ApplyChatTemplate(c.msgs, c.genStart)
				if err != nil {
					t.Errorf("%s: ApplyChatTemplate: %v", c.name, err)
					continue
				}
				if want := ref.Chats[i]; got != want {
					t.Errorf("%s: ApplyChatTemplate(%v, %v) =\n%q\nwant\n%q", c.name, c.msgs, c.genStart, got, want)
				}
			}
		})
	}
}

// TestScannerMatchesRegex checks the hand-written pre-tokenizer scanner against regexp2
// running the patterns it replaces.
func TestScannerMatchesRegex(t *testing.T) {
	lines, texts := corpus(t)
	for _, tc := range []struct {
		name    string
		pattern string
	}{
		{name: "qwen3", pattern: qwenPattern},
		{name: "llama3", pattern: llama3Pattern},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fast, err := newSplitter(patternSpec{Regex: &tc.pattern}, "Isolated", false)
			if err != nil {
				t.Fatal(err)
			}
			slow := *fast
			slow.digits = 0
			if slow.re, err = newRegexp(tc.pattern); err != nil {
				t.Fatal(err)
			}
			bad := 0
			for _, text := range slices.Concat(lines, texts) {
				// regexp2 folds case without U+017F LONG S matching "s", Oniguruma with it;
				// the scanner follows Oniguruma (TestParity checks it on "x'ſa").
				if strings.Contains(text, "'ſ") {
					continue
				}
				whole := []span{{0, len(text)}}
				got := slices.Clone(fast.split(text, whole, new(scratch)))
				want := slow.split(text, whole, new(scratch))
				if !slices.Equal(got, want) {
					if bad++; bad <= 5 {
						t.Errorf("scanner split of %q = %v; regexp2 gives %v", shorten(text), got, want)
					}
				}
			}
		})
	}
}

func shorten(s string) string {
	if len(s) > 300 {
		return s[:300] + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}

func shortenIDs(ids []int) string {
	if len(ids) > 60 {
		return fmt.Sprintf("%v...(%d ids)", ids[:60], len(ids))
	}
	return fmt.Sprint(ids)
}

func firstDiff(a, b []int) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
