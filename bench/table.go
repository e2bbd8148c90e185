package main

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"
)

// row is one line of the result: berth's median against the peer's.
type row struct {
	name        string
	unit        string  // "ms" or "KiB" (less is better), or "MiB/s" (more is better)
	berth, peer float64 // peer is NaN for a row of berth alone
	goal        goal
}

// goal is what berth should reach against the peer.
type goal struct {
	// describe says the goal, and where it helps, how far berth is from it.
	describe func(berth, peer float64) string
	met      func(berth, peer float64) bool
}

// ratioAtMost wants berth/peer ≤ r (for times).
func ratioAtMost(r float64) goal {
	return goal{
		describe: func(_, _ float64) string { return fmt.Sprintf("ratio ≤ %.2f", r) },
		met:      func(b, p float64) bool { return b/p <= r },
	}
}

// ratioAtLeast wants berth/peer ≥ r (for throughputs).
func ratioAtLeast(r float64) goal {
	return goal{
		describe: func(_, _ float64) string { return fmt.Sprintf("ratio ≥ %.2f", r) },
		met:      func(b, p float64) bool { return b/p >= r },
	}
}

// slowerByAtMost wants berth ≤ peer + d (for times in ms), and shows the
// difference.
func slowerByAtMost(d float64) goal {
	return goal{
		describe: func(b, p float64) string { return fmt.Sprintf("≤ peer + %g ms (%+.1f ms)", d, b-p) },
		met:      func(b, p float64) bool { return b-p <= d },
	}
}

// atMost wants berth ≤ v, in the row's unit, whatever the peer.
func atMost(v float64) goal {
	return goal{
		describe: func(_, _ float64) string { return fmt.Sprintf("≤ %g", v) },
		met:      func(b, _ float64) bool { return b <= v },
	}
}

// report is the goal of a row that only reports: always met.
func report() goal {
	return goal{
		describe: func(_, _ float64) string { return "report" },
		met:      func(_, _ float64) bool { return true },
	}
}

// printTable writes the rows as an aligned table.
func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "name\tberth\tpeer\tratio\ttarget\tok/short")
	for _, r := range rows {
		verdict := "short"
		if r.goal.met(r.berth, r.peer) {
			verdict = "ok"
		}
		ratio := fmt.Sprintf("%.2f", r.berth/r.peer)
		if math.IsNaN(r.peer) {
			ratio = "-"
		}
		fmt.Fprintf(tw, "%s (%s)\t%s\t%s\t%s\t%s\t%s\n", r.name, r.unit,
			r.format(r.berth), r.format(r.peer), ratio, r.goal.describe(r.berth, r.peer), verdict)
	}
	tw.Flush()
}

// format shows a value with the precision its unit deserves.
func (r row) format(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	if r.unit == "ms" || r.unit == "KiB" {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}
