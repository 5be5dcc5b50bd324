package taskd

import "testing"

func TestReplayedTimestampRefused(t *testing.T) {
	r := &registry{agents: map[string]*entry{"a": {}, "b": {}}}
	if !r.advance("a", 10) || r.advance("a", 10) || r.advance("a", 9) || !r.advance("a", 11) || !r.advance("b", 1) || r.advance("c", 1) {
		t.Fatal("timestamps must strictly increase per agent, and unknown agents get nothing")
	}
}
