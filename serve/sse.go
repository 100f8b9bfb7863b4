package serve

import (
	"encoding/json"
	"net/http"
	"time"
)

// sseWriter writes Server-Sent Events as OpenAI streams them: one `data: <json>\n\n` event per
// chunk, flushed at once, ended by `data: [DONE]\n\n`.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	// timeout bounds each write: a client that reads nothing for that long fails the write.
	timeout time.Duration
}

func newSSEWriter(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no") // tell reverse proxies not to buffer the stream
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// event writes one data event holding v as JSON and flushes it.
func (s *sseWriter) event(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.raw(b)
}

func (s *sseWriter) raw(data []byte) error {
	buf := make([]byte, 0, len(data)+8)
	buf = append(buf, "data: "...)
	buf = append(buf, data...)
	buf = append(buf, "\n\n"...)
	if s.timeout > 0 {
		s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	}
	if _, err := s.w.Write(buf); err != nil {
		return err
	}
	return s.rc.Flush()
}

// done ends the stream.
func (s *sseWriter) done() error { return s.raw([]byte("[DONE]")) }
