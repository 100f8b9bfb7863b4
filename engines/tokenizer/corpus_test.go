package tokenizer

import (
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fragments are hand-picked texts that stress the parts of tokenization most likely to
// diverge: Unicode classes, normalization, white space runs, contractions and added tokens.
var fragments = map[string][]string{
	"cjk": {
		"你好，世界！今天天气很好。", "日本語のテキストを処理する。カタカナ、ひらがな、漢字。",
		"한국어 문장입니다. 안녕하세요!", "中文标点：“引号”、《书名》……——", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
		"半角ｶﾀｶﾅ", "東京都渋谷区", "我爱Go语言和MLX", "これは「テスト」です", "𠀀𠀁 CJK ext B", "〇一二三",
	},
	"emoji": {
		"👍", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "1️⃣", "❤️", "🧑🏿‍💻", "😀😃😄😁", "✌🏻✌🏼✌🏽✌🏾✌🏿",
		"I ❤️ Go 🚀!", "🤷‍♀️ idk", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 flag", "👨🏻‍🤝‍👨🏿",
	},
	"numbers": {
		"3.14159", "-42", "1,000,000", "1e-9", "0x1F", "½ ¾ ²³ ⅷ Ⅻ", "٣٤٥", "१२३", "１２３",
		"2024-06-01T12:34:56Z", "v1.2.3", "$19.99", "100%", "007", "1st 2nd 3rd 4th", "12345678901234567890",
	},
	"space": {
		"  leading", "trailing  ", "a\tb", "a\t\tb", "\t\tindented", "line1\nline2", "line1\r\nline2",
		"\n\n\n", "a \n b", "   \n   ", "x  \t  y", "\u00a0nbsp", "\u3000ideographic", "tab\t", "\r", "\v\f",
		"end with newline\n", " ", "  ", "\n", "\t", "a  ", " \n\n ", "x\u2003y\u2009z", "\u2028\u2029",
	},
	"punct": {
		"Hello, world!", "...!!!???", "(a+b)*c = d;", "«quotes» „German“ 'single' \"double\"", "—–-",
		"@#$%^&*", "<html><body>x</body></html>", `{"json": [1, 2]}`, "path/to/file.go:12:3",
		"https://example.com/a?b=c&d=e#f", "a.b.c", "--flag=value", "#!/bin/sh", ":)", "¿Qué? ¡Sí!",
	},
	"contractions": {
		"I'm", "you're", "he's", "we've", "they'll", "I'd", "don't", "CAN'T", "WE'RE", "She'S", "it'LL",
		"x'ſa", "'s'", "rock'n'roll", "O'Neil's", "''quoted''", "’curly’s", "'ve 'Ve 'vE", "Y'ALL'D",
	},
	"special": {
		"<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<bos>", "<eos>", "<start_of_turn>model",
		"<end_of_turn>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<think>\n</think>",
		"<tool_call>", "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "<<bos>>", "<pad><unk><mask>",
		"[multimodal]", "<unused0>", "<td>x</td>", "▁▁▁", "▁word", "a <|im_start|> b", "x<think>y",
		" <think> ", "word</think>  next", "<|file_sep|>", "a<|file_sep|>b", " <|box_start|>  x",
		"<|im_end|>\n\n", "\t<|im_start|>", "<|reserved_special_token_5|>",
	},
	"latin": {
		"café", "naïve", "façade", "Ångström", "e\u0301", "A\u030a", "ß", "Œuvre", "İstanbul", "ǅ", "ﬁ ligature",
		"Ωmega", "Ελληνικά", "Русский текст", "Україна", "Ça va? Très bien.", "ḁ̸̛", "Zürich", "ǈubljana",
	},
	"scripts": {
		"مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "বাংলা", "ภาษาไทย", "தமிழ்", "ქართული", "Հայերեն",
		"ሰላም", "ᚠᛇᚻ", "ꯃꯤꯇꯩ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚",
	},
	"odd": {
		"\ufffd", `\xff\xfe`, `\ud800`, "\u200b zero width", "\ufeffBOM", "\ue000 private", "\uffff", "\U0010ffff",
		"\x00\x01\x1f\x7f", "\u0085NEL", "Ã©", "â€™", "\u202eRTL override", "\U0001F3FB alone", "\u0301 combining",
		"\U000E0001 tag", "\u00ad soft hyphen", "\u2063", "\x1c\x1d\x1e",
	},
}

// goPackages are the Go standard library packages whose sources the corpus samples.
var goPackages = []string{"strings", "unicode/utf8", "fmt", "encoding/json", "bufio", "sort", "regexp/syntax", "text/template"}

var (
	corpusOnce  sync.Once
	corpusLines []string
	corpusTexts []string
	corpusErr   error
)

// corpus returns at least 2,000 deterministic single lines and a few multi-line texts
// (whole source files and joined samples, where newline handling matters).
func corpus(tb testing.TB) (lines, texts []string) {
	tb.Helper()
	corpusOnce.Do(func() { corpusLines, corpusTexts, corpusErr = buildCorpus() })
	if corpusErr != nil {
		tb.Fatalf("build corpus: %v", corpusErr)
	}
	return corpusLines, corpusTexts
}

func buildCorpus() (lines, texts []string, err error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, nil, err
	}
	goroot := strings.TrimSpace(string(out))
	var files []string
	for _, pkg := range goPackages {
		names, err := filepath.Glob(filepath.Join(goroot, "src", pkg, "*.go"))
		if err != nil {
			return nil, nil, err
		}
		files = append(files, names...)
	}
	slices.Sort(files)
	var goLines []string
	for i, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		if i%6 == 0 && len(texts) < 10 && len(data) < 60_000 {
			texts = append(texts, string(data))
		}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(l) != "" {
				goLines = append(goLines, l)
			}
		}
	}
	// Every 17th line spreads the sample over all packages.
	for i := 0; i < len(goLines) && len(lines) < 1200; i += 17 {
		lines = append(lines, goLines[i])
	}

	var all []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range fragments {
			if !yield(k) {
				return
			}
		}
	}) {
		all = append(all, fragments[k]...)
	}
	lines = append(lines, all...)
	for n := 1; n <= 40; n++ {
		lines = append(lines, strings.Repeat("9876543210", 4)[:n], "x"+strings.Repeat("1", n)+" "+strings.Repeat("20", n))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	seps := []string{" ", "", "\n", "\t", "  ", ", ", "\r\n", "'", " \n", "\n\n"}
	for range 800 {
		var b strings.Builder
		for j := range 2 + rng.IntN(4) {
			if j > 0 {
				b.WriteString(seps[rng.IntN(len(seps))])
			}
			if rng.IntN(4) == 0 {
				b.WriteString(goLines[rng.IntN(len(goLines))])
			} else {
				b.WriteString(all[rng.IntN(len(all))])
			}
		}
		lines = append(lines, b.String())
	}
	texts = append(texts,
		strings.Join(all, "\n"),
		strings.Join(lines[len(lines)-200:], "\r\n"),
		strings.Join(all, " ")+"\n\n\n  \t\n",
	)
	return lines, texts, nil
}

// corpusOut, when set, makes TestCorpusSize write the corpus as JSON ({"lines": [...],
// "texts": [...]}) for references that run outside Go (just golden-gguf-tokens).
var corpusOut = flag.String("corpus-out", "", "write the tokenizer corpus as JSON to this file")

func TestCorpusSize(t *testing.T) {
	lines, texts := corpus(t)
	if len(lines) < 2000 || len(texts) < 5 {
		t.Fatalf("corpus has %d lines and %d texts; want at least 2000 and 5", len(lines), len(texts))
	}
	if *corpusOut != "" {
		data, err := json.Marshal(map[string][]string{"lines": lines, "texts": texts})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(*corpusOut, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
