// Command llmsim-go-client is an OpenAI API client written with Go's standard library only
// (net/http over crypto/tls), for the Go capture tests. It lets ALPN choose the protocol:
// HTTP/2 by default, HTTP/1.1 under GODEBUG=http2client=0.
//
// Usage: llmsim-go-client MODE ORIGIN, MODE one of
//
//	once   a chat completion and a streamed one, then one JSON line
//	       {"results": [{"stream", "http_version", "sent", "received"}, ...]};
//	steps  prints `ready <pid>`, then for each line on stdin (`plain` or `stream`) makes
//	       that request and prints its result as one JSON line; exits at the end of stdin.
//
// Reads OPENAI_API_KEY; trusts SSL_CERT_FILE (Go's crypto/x509 reads it).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
)

type result struct {
	Stream      bool   `json:"stream"`
	HTTPVersion string `json:"http_version"`
	Sent        string `json:"sent"`
	Received    string `json:"received"`
	Error       string `json:"error,omitempty"`
}

func body(stream bool, n int) string {
	request := map[string]any{
		"model":    "gpt-4o-mini",
		"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("Say hello from Go (%d).", n)}},
	}
	if stream {
		request["stream"] = true
	}
	out, err := json.Marshal(request)
	if err != nil {
		panic(err)
	}
	return string(out)
}

func call(client *http.Client, origin string, stream bool, n int) result {
	sent := body(stream, n)
	r := result{Stream: stream, Sent: sent}
	request, err := http.NewRequest("POST", origin+"/v1/chat/completions", bytes.NewBufferString(sent))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	request.Header.Set("Authorization", "Bearer "+os.Getenv("OPENAI_API_KEY"))
	request.Header.Set("Content-Type", "application/json")
	response, err := client.Do(request)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer response.Body.Close()
	r.HTTPVersion = response.Proto
	received, err := io.ReadAll(response.Body)
	if err != nil {
		r.Error = err.Error()
	}
	if response.StatusCode != http.StatusOK {
		r.Error = fmt.Sprintf("status %d", response.StatusCode)
	}
	r.Received = string(received)
	return r
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: llmsim-go-client once|steps ORIGIN")
		os.Exit(2)
	}
	mode, origin := os.Args[1], os.Args[2]
	client := &http.Client{}
	out := json.NewEncoder(os.Stdout)
	switch mode {
	case "once":
		results := []result{call(client, origin, false, 0), call(client, origin, true, 1)}
		failed := false
		for _, r := range results {
			failed = failed || r.Error != ""
		}
		out.Encode(map[string]any{"results": results})
		if failed {
			os.Exit(1)
		}
	case "steps":
		fmt.Printf("ready %d\n", os.Getpid())
		lines := bufio.NewScanner(os.Stdin)
		for n := 0; lines.Scan(); n++ {
			out.Encode(call(client, origin, lines.Text() == "stream", n))
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", mode)
		os.Exit(2)
	}
}
