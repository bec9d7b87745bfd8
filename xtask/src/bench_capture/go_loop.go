// Command llmsim-bench-go is the capture benchmark's Go client: REQUESTS GET requests over
// one keep-alive HTTP/1.1 connection, with Go's standard library only (net/http over
// crypto/tls). The server's certificate is not checked (a local bench server).
//
// Usage: llmsim-bench-go URL REQUESTS OUT. Waits for a line on stdin, then makes the
// requests (URL?i=1 to URL?i=REQUESTS) and writes one line to OUT: the seconds spent in the
// requests (the sum of each one's own time, from sending it to its whole body read), the
// connections opened, and the body bytes read. Any request that fails, is not answered
// 200 or is not HTTP/1.1 ends it with an error.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"time"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "llmsim-bench-go:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: llmsim-bench-go URL REQUESTS OUT")
		os.Exit(2)
	}
	url, out := os.Args[1], os.Args[3]
	requests, err := strconv.Atoi(os.Args[2])
	if err != nil || requests < 1 {
		fmt.Fprintln(os.Stderr, "llmsim-bench-go: REQUESTS must be a positive integer")
		os.Exit(2)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		// An empty map turns HTTP/2 off: HTTP/1.1 only.
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost: 1,
	}}
	connections := 0
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			connections++
		}
	}}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail(fmt.Errorf("waiting for the start line: %w", err))
	}
	var spent time.Duration
	bytes := 0
	for i := 1; i <= requests; i++ {
		request, err := http.NewRequest("GET", fmt.Sprintf("%s?i=%d", url, i), nil)
		if err != nil {
			fail(err)
		}
		request = request.WithContext(httptrace.WithClientTrace(request.Context(), trace))
		start := time.Now()
		response, err := client.Do(request)
		if err != nil {
			fail(err)
		}
		body, err := io.ReadAll(response.Body)
		response.Body.Close()
		spent += time.Since(start)
		if err != nil {
			fail(err)
		}
		if response.StatusCode != http.StatusOK || response.ProtoMajor != 1 || response.ProtoMinor != 1 {
			fail(fmt.Errorf("request %d: %s over %s", i, response.Status, response.Proto))
		}
		bytes += len(body)
	}
	line := fmt.Sprintf("%.9f %d %d\n", spent.Seconds(), connections, bytes)
	if err := os.WriteFile(out, []byte(line), 0o644); err != nil {
		fail(err)
	}
}
