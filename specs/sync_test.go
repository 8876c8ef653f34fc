package specs

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/vm"
)

// The sync commands are how every client finds its place in the stream; an agent that gets
// them wrong is unusable, however good the rest is. The oracle is the id: a random 64-bit
// value the agent cannot know in advance.
var _ = Describe("synchronisation and ping", Ordered, func() {
	var guest *vm.VM
	BeforeAll(func(ctx SpecContext) {
		guest = bootGuest(ctx)
	}, NodeTimeout(bootTimeout))

	ids := []int64{0, 1, -1, math.MaxInt64, math.MinInt64, rand.Int64(), -rand.Int64()}

	It("guest-sync echoes any 64-bit id, undelimited", cmdLabel("guest-sync"), func(ctx SpecContext) {
		agent := guest.Agent()
		for _, id := range ids {
			By(fmt.Sprintf("sending guest-sync with id %d and reading the raw reply line", id))
			Expect(agent.Send(ctx, request("guest-sync", map[string]any{"id": id}))).To(Succeed())
			reply, err := agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Err).To(BeNil())
			Expect(reply.Delimited).To(BeFalse(), "guest-sync must not send the 0xFF sentinel")
			Expect(decodeInt(reply.Return)).To(Equal(id))
		}
	}, NodeTimeout(time.Minute))

	It("guest-sync-delimited echoes the id after a 0xFF sentinel, also after a 0xFF flush", cmdLabel("guest-sync-delimited"), func(ctx SpecContext) {
		agent := guest.Agent()
		for _, id := range ids {
			By(fmt.Sprintf("sending 0xFF, half a request, 0xFF, then guest-sync-delimited with id %d", id))
			raw := append([]byte{0xff}, `{"execute": "guest-ping", "argu`...)
			raw = append(raw, 0xff)
			raw = append(raw, request("guest-sync-delimited", map[string]any{"id": id})...)
			Expect(agent.Send(ctx, raw)).To(Succeed())

			By("skipping the flush's error replies up to the delimited one")
			reply := readUntilDelimited(ctx, agent)
			Expect(reply.Err).To(BeNil())
			Expect(decodeInt(reply.Return)).To(Equal(id))
		}
	}, NodeTimeout(time.Minute))

	It("guest-sync checks its argument like the reference", cmdLabel("guest-sync", "guest-sync-delimited"), func(ctx SpecContext) {
		agent := guest.Agent()
		for _, cmd := range []string{"guest-sync", "guest-sync-delimited"} {
			By(cmd + " without an id: Parameter 'id' is missing")
			err := agent.Call(ctx, cmd, nil, nil)
			Expect(err).To(MatchAgentError("GenericError", "Parameter 'id' is missing"))
			By(cmd + " with a string id: an integer is expected")
			err = agent.Call(ctx, cmd, map[string]any{"id": "7"}, nil)
			Expect(err).To(MatchAgentError("GenericError", "Invalid parameter type for 'id', expected: integer"))
		}
	}, NodeTimeout(time.Minute))

	It("guest-ping answers an empty object and echoes the request's id", cmdLabel("guest-ping"), func(ctx SpecContext) {
		agent := guest.Agent()
		var ret map[string]any
		Expect(agent.Call(ctx, "guest-ping", nil, &ret)).To(Succeed())
		Expect(ret).To(BeEmpty())

		By("an id of any JSON type comes back in the reply")
		for _, id := range []string{`1`, `"abc"`, `[1, {"x": null}]`} {
			Expect(agent.Send(ctx, []byte(`{"execute": "guest-ping", "id": `+id+"}\n"))).To(Succeed())
			reply, err := agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Err).To(BeNil())
			Expect(reply.ID).To(MatchJSON(id))
		}

		By("an argument guest-ping does not take is refused")
		err := agent.Call(ctx, "guest-ping", map[string]any{"foo": 42}, nil)
		Expect(err).To(MatchAgentError("GenericError", "Parameter 'foo' is unexpected"))
	}, NodeTimeout(time.Minute))
})

// request renders one request line.
func request(cmd string, args map[string]any) []byte {
	m := map[string]any{"execute": cmd}
	if args != nil {
		m["arguments"] = args
	}
	b, err := json.Marshal(m)
	Expect(err).NotTo(HaveOccurred())
	return append(b, '\n')
}

// readUntilDelimited reads reply lines until the first one preceded by 0xFF.
func readUntilDelimited(ctx SpecContext, agent *qga.Client) *qga.Reply {
	GinkgoHelper()
	for range 100 {
		reply, err := agent.ReadReply(ctx)
		Expect(err).NotTo(HaveOccurred())
		if reply.Delimited {
			return reply
		}
		Expect(reply.Err).NotTo(BeNil(), "only error replies to the flushed garbage may come before the delimited reply, got %s", reply.Raw)
	}
	Fail("no delimited reply within 100 lines")
	return nil
}

// decodeInt decodes a JSON integer exactly (no float64 detour).
func decodeInt(raw json.RawMessage) int64 {
	GinkgoHelper()
	var n int64
	Expect(json.Unmarshal(raw, &n)).To(Succeed(), "not an integer: %s", raw)
	return n
}
