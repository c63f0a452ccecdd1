// Command smtpload is the project's load tool: it submits messages over
// SMTP with C concurrent sessions and reports throughput and latency, and
// it runs the counting sink that a relay under test forwards to, so that a
// figure can be end to end.
//
//	smtpload sink --listen 127.0.0.1:2525 --expect 5000
//	smtpload idle --addr 127.0.0.1:2587 --sessions 5000 --hold 30s
//	smtpload delay --listen 127.0.0.1:2526 --to 127.0.0.1:2525 --delay 10ms
//	smtpload run --addr 127.0.0.1:2587 --starttls --user u --pass p --from u@example.com \
//	    --sessions 20 --per-session 0 --size 10240 --total 5000 [--rate 400]
//
// Without --rate the load is a closed loop: each session sends its next
// message as soon as the last one is answered, which measures the most a
// server can take. With --rate it is open: messages are due on a fixed
// schedule, and latency counts from when each was due, which is what a
// latency target at a given load means.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: smtpload run|sink|idle|delay [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runLoad(os.Args[2:])
	case "sink":
		err = runSink(os.Args[2:])
	case "idle":
		err = runIdle(os.Args[2:])
	case "delay":
		err = runDelay(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (run, sink, idle or delay)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "smtpload:", err)
		os.Exit(1)
	}
}
