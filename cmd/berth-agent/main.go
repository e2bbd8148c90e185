// Command berth-agent is berth's helper inside every user container. berth
// mounts it read-only and runs it as the container's main process; see
// package agent.
package main

import (
	"os"

	"github.com/berth-ssh/berth/agent"
)

func main() { os.Exit(agent.Main(os.Args[1:])) }
