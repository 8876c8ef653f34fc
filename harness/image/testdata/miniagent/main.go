// Command miniagent is a stand-in for a static Go agent in the image's boot tests: it opens
// its port like qemu-ga (-m virtio-serial -p PORT), answers guest-sync-delimited and
// guest-ping, logs its arguments to stderr, and exits when the port goes away.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
)

func main() {
	port := flag.String("p", "", "port path")
	flag.String("m", "", "transport method")
	flag.String("l", "", "log file")
	flag.Bool("v", false, "verbose")
	flag.String("b", "", "blocked commands")
	flag.Parse()
	fmt.Fprintf(os.Stderr, "miniagent args: %q\n", os.Args[1:])
	f, err := os.OpenFile(*port, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			os.Exit(0) // the port was unplugged
		}
		var req struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID int64 `json:"id"`
			} `json:"arguments"`
		}
		// Whatever precedes a 0xFF resync byte is garbage by the protocol.
		if i := strings.LastIndexByte(line, 0xFF); i >= 0 {
			line = line[i+1:]
		}
		if json.Unmarshal([]byte(line), &req) != nil {
			continue
		}
		switch req.Execute {
		case "guest-sync-delimited":
			fmt.Fprintf(f, "\xff{\"return\": %d}\n", req.Arguments.ID)
		case "guest-ping":
			fmt.Fprint(f, "{\"return\": {}}\n")
		}
	}
}
