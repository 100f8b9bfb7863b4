package serve

import (
	_ "embed"
	"net/http"
)

// indexHTML is the web chat: one self-contained page, no build step.
//
//go:embed web/index.html
var indexHTML []byte

func serveIndex(w *recorder, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	w.Write(indexHTML)
}
