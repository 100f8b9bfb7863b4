package serve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestWebChat opens the web chat in headless Chromium, types a message, presses Enter and waits
// for the streamed reply and the live tok/s, then takes a screenshot (kept under $HIPPO_SCREENSHOT
// when set). Chromium is driven over the DevTools protocol with a minimal WebSocket client.
func TestWebChat(t *testing.T) {
	m, g := fakeModel("Hippos ", "are ", "large ", "semi-aquatic ", "mammals.")
	// The generator waits at its gate before each token: the test lets two through, sees the page
	// show them, then opens the gate. A page or server that only shows the reply once it is whole
	// never shows the partial one, however long the wait.
	g.gate = make(chan struct{})
	var open sync.Once
	release := func() { open.Do(func() { close(g.gate) }) }
	defer release()
	_, ts := newTestServer(t, m, Options{})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	page := sendInBrowser(ctx, t, ts.URL+"/", "Tell me about hippos")
	defer page.Close()
	// Tokens arrive one by one: the reply must be seen part-way before it is complete.
	for i := range 2 {
		select {
		case g.gate <- struct{}{}:
		case <-time.After(time.Minute):
			t.Fatalf("the generator was not asked for token %d within a minute; page text:\n%s", i+1, strings.TrimSpace(page.eval(t, "document.body.innerText")))
		}
	}
	page.waitTrueFor(t, `(document.querySelector(".assistant .text")||{}).textContent === "Hippos are "`, "a partial reply", time.Minute)
	release()
	page.waitTrue(t, `(document.querySelector(".assistant .text")||{}).textContent === "Hippos are large semi-aquatic mammals."`, "the whole reply")
	page.waitTrue(t, `/6 tokens · [0-9.]+ tok\/s · first token .* · stop/.test(document.getElementById("stats").textContent)`, "the live stats")
	if got := page.eval(t, `document.querySelector(".user .text").textContent`); got != "Tell me about hippos" {
		t.Errorf("user bubble %q", got)
	}

	var shot struct{ Data string }
	page.call(t, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	img, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(img)); err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("HIPPO_SCREENSHOT")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "webchat.png")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// sendInBrowser opens the web chat at pageURL in headless Chromium (started for this test, which
// fails when it is not installed), waits for its model list, types text into the message box and
// presses Enter. The caller closes the returned page.
func sendInBrowser(ctx context.Context, t *testing.T, pageURL, text string) *cdp {
	t.Helper()
	bin := findChromium()
	if bin == "" {
		t.Fatal("chromium is not installed: run `just setup` (it installs the Debian package chromium)")
	}
	page := cdpPage(t, "http://127.0.0.1:"+startChromium(ctx, t, bin))
	page.call(t, "Page.navigate", map[string]any{"url": pageURL})
	page.waitTrue(t, `document.querySelector("#model option") !== null`, "the model list to load")
	page.eval(t, `document.getElementById("input").focus()`)
	page.call(t, "Input.insertText", map[string]any{"text": text})
	for _, typ := range []string{"keyDown", "keyUp"} {
		page.call(t, "Input.dispatchKeyEvent", map[string]any{"type": typ, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"})
	}
	return page
}

// startChromium starts headless Chromium and returns the port of its DevTools server; the browser
// and its helpers are killed when the test ends.
func startChromium(ctx context.Context, t *testing.T, bin string) string {
	t.Helper()
	profile, err := os.MkdirTemp("", "hippo-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--no-first-run", "--user-data-dir="+profile, "--remote-debugging-port=0", "--window-size=1000,600", "about:blank")
	// Its own process group, so that the renderer and helper processes end with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		for range 50 { // helpers may still be exiting
			if os.RemoveAll(profile) == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	port := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`DevTools listening on ws://127\.0\.0\.1:(\d+)/`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				port <- m[1]
			}
		}
	}()
	var devtools string
	select {
	case devtools = <-port:
	case <-ctx.Done():
		t.Fatal("chromium did not start its DevTools server")
	}

	return devtools
}

// cdp is a DevTools protocol connection to one page.
type cdp struct {
	conn net.Conn
	r    *bufio.Reader
	id   int
}

// cdpPage connects to the first page target of the browser whose DevTools HTTP server is base.
func cdpPage(t *testing.T, base string) *cdp {
	t.Helper()
	var targets []struct{ Type, WebSocketDebuggerURL string }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(base + "/json/list")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		if len(targets) > 0 && targets[0].Type == "page" || time.Now().After(deadline) {
			break
		}
	}
	if len(targets) == 0 {
		t.Fatal("chromium has no page target")
	}
	u, err := url.Parse(targets[0].WebSocketDebuggerURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 16)
	rand.Read(key)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("websocket handshake: %v %v", resp, err)
	}
	return &cdp{conn: conn, r: r}
}

func (c *cdp) Close() { c.conn.Close() }

// send writes one masked text frame, as a WebSocket client must.
func (c *cdp) send(msg []byte) error {
	hdr := []byte{0x81}
	switch n := len(msg); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 1<<16:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := make([]byte, 4)
	rand.Read(mask)
	body := make([]byte, len(msg))
	for i := range msg {
		body[i] = msg[i] ^ mask[i%4]
	}
	_, err := c.conn.Write(append(append(hdr, mask...), body...))
	return err
}

// recv reads one message, joining fragments.
func (c *cdp) recv() ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return nil, err
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(c.r, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(c.r, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c.r, payload); err != nil {
			return nil, err
		}
		if op := h[0] & 0x0f; op == 0x8 {
			return nil, io.EOF
		} else if op == 0x9 || op == 0xa {
			continue // ping and pong carry no protocol message
		}
		msg = append(msg, payload...)
		if h[0]&0x80 != 0 {
			return msg, nil
		}
	}
}

// call runs a DevTools method and decodes its result into out (if given), skipping events.
func (c *cdp) call(t *testing.T, method string, params any, out ...any) {
	t.Helper()
	c.id++
	req, _ := json.Marshal(map[string]any{"id": c.id, "method": method, "params": params})
	c.conn.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.send(req); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	for {
		b, err := c.recv()
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		var resp struct {
			ID     int
			Result json.RawMessage
			Error  *struct{ Message string }
		}
		if err := json.Unmarshal(b, &resp); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if resp.ID != c.id {
			continue
		}
		if resp.Error != nil {
			t.Fatalf("%s: %s", method, resp.Error.Message)
		}
		if len(out) > 0 {
			if err := json.Unmarshal(resp.Result, out[0]); err != nil {
				t.Fatalf("%s: %v", method, err)
			}
		}
		return
	}
}

// eval evaluates a JavaScript expression in the page and returns its value as text.
func (c *cdp) eval(t *testing.T, expr string) string {
	t.Helper()
	var r struct {
		Result struct {
			Value any
		}
		ExceptionDetails *struct{ Text string }
	}
	c.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r)
	if r.ExceptionDetails != nil {
		t.Fatalf("%s: %s", expr, r.ExceptionDetails.Text)
	}
	return fmt.Sprint(r.Result.Value)
}

func (c *cdp) waitTrue(t *testing.T, expr, what string) {
	t.Helper()
	c.waitTrueFor(t, expr, what, 30*time.Second)
}

// waitTrueFor is waitTrue with another deadline.
func (c *cdp) waitTrueFor(t *testing.T, expr, what string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for c.eval(t, expr) != "true" {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; page text:\n%s", what, strings.TrimSpace(c.eval(t, "document.body.innerText")))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// findChromium looks for Chromium (or Chrome) on PATH and in the usual macOS place.
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "/Applications/Chromium.app/Contents/MacOS/Chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}
