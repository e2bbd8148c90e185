package gpus

import (
	"bufio"
	"io"
	"os"
	"regexp"
	"strconv"
)

// containerID matches a Docker container ID in a cgroup path, in the
// layouts of both cgroup drivers and both cgroup versions:
//
//	v1, cgroupfs:  12:devices:/docker/<id>
//	v1, systemd:   4:pids:/system.slice/docker-<id>.scope
//	v2, cgroupfs:  0::/docker/<id>
//	v2, systemd:   0::/system.slice/docker-<id>.scope
//
// and nested under a parent such as /kubepods/... or /berth.slice/....
var containerID = regexp.MustCompile(`(?:/docker/|/docker-)([0-9a-f]{64})(?:\.scope)?(?:/|$)`)

// ContainerOfCgroup returns the Docker container ID a /proc/<pid>/cgroup
// file names, or "" for a process outside any container.
func ContainerOfCgroup(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if m := containerID.FindStringSubmatch(sc.Text()); m != nil {
			return m[1]
		}
	}
	return ""
}

// ContainerOfPID returns the Docker container ID of a host process, from
// /proc (procRoot, normally "/proc"). It needs berth in the host's PID
// namespace, as NVML reports host PIDs.
func ContainerOfPID(procRoot string, pid uint32) string {
	f, err := os.Open(procRoot + "/" + strconv.FormatUint(uint64(pid), 10) + "/cgroup")
	if err != nil {
		return ""
	}
	defer f.Close()
	return ContainerOfCgroup(f)
}
