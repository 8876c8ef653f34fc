package specs

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/vm"
)

// The wire protocol as a client meets it through the virtio-serial port: garbage, cut-off
// requests, 0xFF resynchronisation, unknown commands, bad arguments, ids, replies of tens of
// MiB, and a port that vanishes mid-reply. Where a bad request would have had an effect had it
// run (guest-file-open with mode w creates a file), the console checks that it did not run;
// the error texts are those qemu-ga 7.2 sends for the same bytes (checked on the host with
// `qemu-ga -m unix-listen`).

// protoDir is the guest directory these specs work in (tmpfs).
const protoDir = "/tmp/qgakit-proto"

// protoBigSize is GUEST_FILE_READ_COUNT_MAX, the largest read one request may ask for.
const protoBigSize = 48 << 20

// protoStuckCount is the read that the specs interrupting a reply ask for: its 21 MiB of base64
// are far more than what the guest's output virtqueue (128 buffers, each at most 32 KiB) and the
// host's socket can hold while the host reads nothing, and a third of the 48 MiB reply to wait
// for under TCG.
const protoStuckCount = 16 << 20

// One guest for all. ContinueOnFailure, because every spec starts from a synchronised stream
// (BeforeEach) and uses files of its own; the reply specs that need the 48 MiB file check that
// the spec making it got that far.
var _ = Describe("the protocol over virtio-serial", Ordered, ContinueOnFailure, Label("protocol"), func() {
	var guest *vm.VM
	// big is the content of protoDir/big as the console vouched for it (by sha256), once the
	// 48 MiB spec has read it.
	var big []byte
	BeforeAll(func(ctx SpecContext) {
		// A 48 MiB reply costs the agent several copies of it (file data, base64, JSON), on top
		// of the 48 MiB file in tmpfs; the default 512 MiB would leave little room to spare,
		// and TCG allocates the guest's memory only as it is touched.
		guest = bootGuest(ctx, withVM(vm.WithMemory(1024)))
		_, err := guest.Console().RunOK(ctx, "mkdir -p "+protoDir)
		Expect(err).NotTo(HaveOccurred())
	}, NodeTimeout(bootTimeout))
	BeforeEach(func(ctx SpecContext) {
		// A spec that failed halfway may have left replies unread; they must not be read as
		// the next spec's.
		Expect(guest.Agent().Sync(ctx)).To(Succeed())
	}, NodeTimeout(time.Minute))

	It("answers malformed JSON with the reference's parse errors, runs none of it, and answers the next request",
		cmdLabel("guest-file-open", "guest-ping"), func(ctx SpecContext) {
			agent := guest.Agent()
			open := func(path string) string {
				return `{"execute": "guest-file-open", "arguments": {"path": "` + path + `", "mode": "w"}`
			}
			cases := []struct {
				raw  func(path string) string
				want []string
			}{
				{func(p string) string { return open(p) + "]" }, []string{"expected separator in dict"}},
				{func(p string) string { return strings.Replace(open(p)+"}", `", "arguments"`, `" "arguments"`, 1) }, []string{"expected separator in dict"}},
				{func(p string) string { return open(p) + ",}" }, []string{"expecting value"}},
				{func(p string) string { return open(p) + `, "arguments": {}}` }, []string{"duplicate key"}},
				{func(p string) string { return strings.Replace(open(p)+"}", `"w"`, "w", 1) }, []string{"invalid keyword 'w'"}},
				{func(p string) string { return strings.Replace(open(p)+"}", `"w"`, `"w\q"`, 1) }, []string{"invalid escape sequence in string"}},
				{func(p string) string { return strings.Replace(open(p)+"}", `"w"`, "\"w\xc3\x28\"", 1) }, []string{"invalid UTF-8 sequence in string"}},
				{func(p string) string { return strings.Replace(open(p)+"}", `"w"`, `"\ud800"`, 1) }, []string{`\ud800 is not a valid Unicode character`}},
				{func(p string) string { return open(p) + `, 5: 1}` }, []string{"key is not a string in object"}},
				{func(p string) string { return open(p) + `, "id"}` }, []string{"missing : in object pair"}},
				{func(p string) string { return open(p) + `, "id": tru}` }, []string{"invalid keyword 'tru'"}},
				// A control character ends the string token as stray; the lexer then skips to
				// the next structural character, and the two closing braces are values missing.
				{func(p string) string { return strings.Replace(open(p)+"}", `"w"`, "\"w\x01\"", 1) },
					[]string{"stray '\"w\x01'", "expecting value", "expecting value"}},
				{func(p string) string { return open(p) + " @ }" }, []string{"stray '@'", "expecting value"}},
			}
			var paths []string
			for i, c := range cases {
				path := fmt.Sprintf("%s/malformed-%d", protoDir, i)
				paths = append(paths, path)
				raw := c.raw(path)
				By(fmt.Sprintf("sending %q, then a guest-ping with an id", raw))
				id := fmt.Sprintf("after-%d", i)
				Expect(agent.Send(ctx, []byte(raw+"\n"+`{"execute": "guest-ping", "id": "`+id+`"}`+"\n"))).To(Succeed())
				errs, last := protoReadUntilID(ctx, agent, id)
				var descs []string
				for _, e := range errs {
					descs = append(descs, strings.TrimPrefix(e, "JSON parse error, "))
				}
				Expect(descs).To(Equal(c.want), "errors for %q", raw)
				Expect(last.Err).To(BeNil())
				Expect(last.Return).To(MatchJSON(`{}`))
			}
			By("the bare values and lists are no request: QMP input must be a JSON object")
			for i, raw := range []string{`5`, `"guest-ping"`, `null`, "[" + open(protoDir+"/in-a-list") + "}]"} {
				id := fmt.Sprintf("value-%d", i)
				Expect(agent.Send(ctx, []byte(raw+"\n"+`{"execute": "guest-ping", "id": "`+id+`"}`+"\n"))).To(Succeed())
				errs, _ := protoReadUntilID(ctx, agent, id)
				Expect(errs).To(Equal([]string{"QMP input must be a JSON object"}), "errors for %q", raw)
			}
			paths = append(paths, protoDir+"/in-a-list")

			By("the console finds none of the files those requests name: nothing ran")
			for _, p := range paths {
				Expect(gfConsoleExists(ctx, guest, p)).To(BeFalse(), "%s was created", p)
			}

			By("control: the well-formed request, sent a few bytes per write, does create its file")
			good := open(protoDir+"/well-formed") + `, "id": "good"}` + "\n"
			for i := 0; i < len(good); i += 7 {
				Expect(agent.Send(ctx, []byte(good[i:min(i+7, len(good))]))).To(Succeed())
			}
			errs, last := protoReadUntilID(ctx, agent, "good")
			Expect(errs).To(BeEmpty())
			Expect(last.Err).To(BeNil())
			Expect(gfConsoleExists(ctx, guest, protoDir+"/well-formed")).To(BeTrue())
			var h int64
			Expect(json.Unmarshal(last.Return, &h)).To(Succeed())
			gfClose(ctx, agent, h)
		}, NodeTimeout(3*time.Minute))

	// The one place where the two agents knowingly answer differently (see
	// agent/protocol's TestReferenceNestingDeviation): the reference restarts its bracket count
	// after a nesting-limit error, so the rejected input's surplus brackets open a new message
	// that swallows the requests after it until something closes it, here the 0xFF.
	It("runs the request after a JSON nesting-limit error, which the reference 7.2 swallows",
		cmdLabel("guest-file-open", "guest-sync-delimited"), func(ctx SpecContext) {
			agent := guest.Agent()
			reference := isReference()
			path := protoDir + "/after-nesting"
			By("1026 opening brackets (the limit is 1024) on a line, then a guest-file-open on the next, then 0xFF and guest-sync-delimited")
			raw := []byte(strings.Repeat("[", 1026) + "\n" +
				`{"execute": "guest-file-open", "arguments": {"path": "` + path + `", "mode": "w"}, "id": "after-nesting"}` + "\n")
			raw = append(raw, 0xff)
			raw = append(raw, request("guest-sync-delimited", map[string]any{"id": 7200})...)
			Expect(agent.Send(ctx, raw)).To(Succeed())
			var replies []*qga.Reply
			for {
				reply, err := agent.ReadReply(ctx)
				Expect(err).NotTo(HaveOccurred())
				if reply.Delimited {
					Expect(decodeInt(reply.Return)).To(Equal(int64(7200)))
					break
				}
				replies = append(replies, reply)
			}
			nesting := &qga.Error{Class: "GenericError", Desc: "JSON nesting depth limit exceeded"}
			stray := &qga.Error{Class: "GenericError", Desc: "JSON parse error, stray '\uFFFD'"}
			if reference {
				By("the reference (7.2 by guest-info): the error, then only the 0xFF's error; the console finds no file, the request never ran")
				Expect(replies).To(HaveLen(2))
				Expect(replies[0].Err).To(Equal(nesting))
				Expect(replies[1].Err).To(Equal(stray))
				Expect(gfConsoleExists(ctx, guest, path)).To(BeFalse())
				return
			}
			By("ours: the error, the request's reply with its id, the 0xFF's error; the console finds the file the request created")
			Expect(replies).To(HaveLen(3))
			Expect(replies[0].Err).To(Equal(nesting))
			Expect(replies[1].Err).To(BeNil())
			Expect(replies[1].ID).To(MatchJSON(`"after-nesting"`))
			Expect(replies[2].Err).To(Equal(stray))
			Expect(gfConsoleExists(ctx, guest, path)).To(BeTrue())
			gfClose(ctx, agent, decodeInt(replies[1].Return))
		}, NodeTimeout(2*time.Minute))

	It("drops a request cut by 0xFF without running it, and guest-sync-delimited finds its place after it",
		cmdLabel("guest-sync-delimited", "guest-file-open"), func(ctx SpecContext) {
			agent := guest.Agent()
			const cut = 0xff
			cases := []struct {
				name string
				raw  func(path string) []byte
				want []string
			}{
				{"after a member", func(p string) []byte {
					return append([]byte(`{"execute": "guest-file-open", "arguments": {"path": "`+p+`", "mode": "w"`), cut)
				}, []string{`stray '` + "\uFFFD" + `'`}},
				{"inside a string value", func(p string) []byte {
					return append([]byte(`{"execute": "guest-file-open", "arguments": {"path": "`+p+`", "mode": "w`), cut)
				}, []string{`stray '"w` + "\uFFFD" + `'`}},
				{"inside the path", func(p string) []byte {
					return append([]byte(`{"execute": "guest-file-open", "arguments": {"path": "`+p), cut)
				}, []string{`stray '"` + protoDir + `/cut-2` + "\uFFFD" + `'`}},
				{"before the last brace", func(p string) []byte {
					return append(append([]byte(`{"execute": "guest-file-open", "arguments": {"path": "`+p+`", "mode": "w"}`), cut), '}')
				}, []string{`stray '` + "\uFFFD" + `'`, "expecting value"}},
				{"three times", func(p string) []byte {
					return append([]byte(`{"execute": "guest-file-open", "arguments": {"path": "`+p+`", "mode": "w"`), cut, cut, cut)
				}, []string{`stray '` + "\uFFFD" + `'`, `stray '` + "\uFFFD" + `'`, `stray '` + "\uFFFD" + `'`}},
			}
			for i, c := range cases {
				path := fmt.Sprintf("%s/cut-%d", protoDir, i)
				id := int64(7000 + i)
				By(fmt.Sprintf("0xFF %s of a guest-file-open, then guest-sync-delimited %d", c.name, id))
				raw := append(c.raw(path), request("guest-sync-delimited", map[string]any{"id": id})...)
				Expect(agent.Send(ctx, raw)).To(Succeed())
				var descs []string
				for {
					reply, err := agent.ReadReply(ctx)
					Expect(err).NotTo(HaveOccurred())
					if reply.Delimited {
						Expect(reply.Err).To(BeNil())
						Expect(decodeInt(reply.Return)).To(Equal(id))
						break
					}
					Expect(reply.Err).NotTo(BeNil(), "only errors may come before the delimited reply, got %s", reply.Raw)
					Expect(reply.Err.Class).To(Equal("GenericError"))
					Expect(reply.ID).To(BeNil(), "a parse error has no id")
					descs = append(descs, strings.TrimPrefix(reply.Err.Desc, "JSON parse error, "))
				}
				Expect(descs).To(Equal(c.want))
				By("the console finds no " + path + ": the cut request did not run")
				Expect(gfConsoleExists(ctx, guest, path)).To(BeFalse())
			}

			By("a request completed before the 0xFF runs: its reply, then the 0xFF's error, then the sync")
			done := protoDir + "/complete-before-cut"
			raw := append([]byte(`{"execute": "guest-file-open", "arguments": {"path": "`+done+`", "mode": "w"}, "id": "x"}`), cut)
			raw = append(raw, request("guest-sync-delimited", map[string]any{"id": 7100})...)
			Expect(agent.Send(ctx, raw)).To(Succeed())
			reply, err := agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Err).To(BeNil())
			Expect(reply.ID).To(MatchJSON(`"x"`))
			h := decodeInt(reply.Return)
			reply, err = agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Err).To(Equal(&qga.Error{Class: "GenericError", Desc: "JSON parse error, stray '\uFFFD'"}))
			reply, err = agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Delimited).To(BeTrue())
			Expect(decodeInt(reply.Return)).To(Equal(int64(7100)))
			Expect(gfConsoleExists(ctx, guest, done)).To(BeTrue())
			gfClose(ctx, agent, h)
		}, NodeTimeout(3*time.Minute))

	It("refuses unknown commands and bad arguments with the reference's errors, echoes the id, and runs nothing",
		cmdLabel("guest-file-open", "guest-file-read", "guest-file-write", "guest-file-seek", "guest-ping"),
		func(ctx SpecContext) {
			agent := guest.Agent()
			p := func(name string) string { return protoDir + "/args-" + name }
			cases := []struct {
				req   string
				class string
				desc  string
				path  string // a file the request would have created, had it run
			}{
				{`{"execute": "guest-no-such-command"}`, "CommandNotFound", "The command guest-no-such-command has not been found", ""},
				{`{"execute": "GUEST-PING"}`, "CommandNotFound", "The command GUEST-PING has not been found", ""},
				{`{"execute": ""}`, "CommandNotFound", "The command  has not been found", ""},
				{`{"execute": "guest-file-open ", "arguments": {"path": "` + p("space") + `", "mode": "w"}}`,
					"CommandNotFound", "The command guest-file-open  has not been found", p("space")},
				{`{"execute": "guest-file-open", "arguments": {"mode": "w"}}`, "GenericError", "Parameter 'path' is missing", ""},
				{`{"execute": "guest-file-open", "arguments": {"path": 5, "mode": "w"}}`, "GenericError", "Invalid parameter type for 'path', expected: string", ""},
				{`{"execute": "guest-file-open", "arguments": {"path": null, "mode": "w"}}`, "GenericError", "Invalid parameter type for 'path', expected: string", ""},
				{`{"execute": "guest-file-open", "arguments": {"path": "` + p("mode-type") + `", "mode": ["w"]}}`,
					"GenericError", "Invalid parameter type for 'mode', expected: string", p("mode-type")},
				{`{"execute": "guest-file-open", "arguments": {"path": "` + p("extra") + `", "mode": "w", "flags": 1}}`,
					"GenericError", "Parameter 'flags' is unexpected", p("extra")},
				{`{"execute": "guest-file-open", "arguments": {"path": "` + p("member") + `", "mode": "w"}, "foo": 1}`,
					"GenericError", "QMP input member 'foo' is unexpected", p("member")},
				{`{"execute": "guest-file-open", "arguments": {"path": "` + p("oob") + `", "mode": "w"}, "exec-oob": "x"}`,
					"GenericError", "QMP input member 'exec-oob' is unexpected", p("oob")},
				{`{"exec-oob": "guest-file-open", "arguments": {"path": "` + p("oob2") + `", "mode": "w"}}`,
					"GenericError", "QMP input member 'exec-oob' is unexpected", p("oob2")},
				{`{"execute": "guest-file-open", "arguments": "` + p("string") + `"}`,
					"GenericError", "QMP input member 'arguments' must be an object", p("string")},
				{`{"execute": "guest-file-open", "arguments": null}`, "GenericError", "QMP input member 'arguments' must be an object", ""},
				{`{"arguments": {"path": "` + p("noexec") + `", "mode": "w"}}`, "GenericError", "QMP input lacks member 'execute'", p("noexec")},
				{`{"execute": ["guest-file-open"], "arguments": {"path": "` + p("list") + `", "mode": "w"}}`,
					"GenericError", "QMP input member 'execute' must be a string", p("list")},
				{`{"execute": "guest-file-read", "arguments": {"handle": "1000"}}`, "GenericError", "Invalid parameter type for 'handle', expected: integer", ""},
				{`{"execute": "guest-file-read", "arguments": {"handle": 1000, "count": 1.5}}`, "GenericError", "Invalid parameter type for 'count', expected: integer", ""},
				{`{"execute": "guest-file-read", "arguments": {"handle": 1000, "count": 18446744073709551615}}`,
					"GenericError", "Invalid parameter type for 'count', expected: integer", ""},
				{`{"execute": "guest-file-write", "arguments": {"handle": 1000}}`, "GenericError", "Parameter 'buf-b64' is missing", ""},
				{`{"execute": "guest-file-seek", "arguments": {"handle": 1000, "offset": 0}}`, "GenericError", "Parameter 'whence' is missing", ""},
				{`{"execute": "guest-ping", "arguments": {"foo": 42}}`, "GenericError", "Parameter 'foo' is unexpected", ""},
			}
			for i, c := range cases {
				for _, withID := range []bool{false, true} {
					req := c.req
					id := fmt.Sprintf(`"bad-%d"`, i)
					if withID {
						req = strings.TrimSuffix(req, "}") + `, "id": ` + id + "}"
					}
					By("sending " + req)
					Expect(agent.Send(ctx, []byte(req+"\n"))).To(Succeed())
					reply, err := agent.ReadReply(ctx)
					Expect(err).NotTo(HaveOccurred())
					Expect(reply.Err).To(Equal(&qga.Error{Class: c.class, Desc: c.desc}), "reply %s", reply.Raw)
					if withID {
						Expect(reply.ID).To(MatchJSON(id), "the id comes back with the error")
					} else {
						Expect(reply.ID).To(BeNil(), "no id was sent, none comes back")
					}
				}
				if c.path != "" {
					Expect(gfConsoleExists(ctx, guest, c.path)).To(BeFalse(), "%s was created", c.path)
				}
			}
		}, NodeTimeout(3*time.Minute))

	It("echoes an id of any JSON type in success and error replies, in order when pipelined, and never in parse errors",
		cmdLabel("guest-file-open", "guest-file-close", "guest-ping"), func(ctx SpecContext) {
			agent := guest.Agent()
			path := protoDir + "/ids"
			ids := []string{`0`, `-5`, `9007199254740993`, `1.5`, `"abc"`, `""`, `"\u00e9\n\""`, `true`, `false`, `null`,
				`[]`, `{}`, `{"a": [1, 2.5, null, true, {"b": "c"}]}`}
			By("pipelining, in one write, an open, a close and a second close of the same handle for each id")
			var batch strings.Builder
			for _, id := range ids {
				fmt.Fprintf(&batch, `{"execute": "guest-file-open", "arguments": {"path": %q, "mode": "w"}, "id": %s}`+"\n", path, id)
			}
			Expect(agent.Send(ctx, []byte(batch.String()))).To(Succeed())
			var handles []int64
			for _, id := range ids {
				reply, err := agent.ReadReply(ctx)
				Expect(err).NotTo(HaveOccurred())
				Expect(reply.Err).To(BeNil())
				Expect(reply.ID).To(MatchJSON(id), "reply %s", reply.Raw)
				h := decodeInt(reply.Return)
				if len(handles) > 0 {
					Expect(h).To(BeNumerically(">", handles[len(handles)-1]), "replies come in request order")
				}
				handles = append(handles, h)
			}
			By("the console sees the agent holding the file open once per handle")
			open := 0
			for _, f := range gfAgentOpenFiles(ctx, guest) {
				if f == path {
					open++
				}
			}
			Expect(open).To(Equal(len(ids)))

			batch.Reset()
			for i, id := range ids {
				fmt.Fprintf(&batch, `{"execute": "guest-file-close", "arguments": {"handle": %d}, "id": %s}`+"\n", handles[i], id)
				fmt.Fprintf(&batch, `{"execute": "guest-file-close", "arguments": {"handle": %d}, "id": %s}`+"\n", handles[i], id)
			}
			Expect(agent.Send(ctx, []byte(batch.String()))).To(Succeed())
			for i, id := range ids {
				reply, err := agent.ReadReply(ctx)
				Expect(err).NotTo(HaveOccurred())
				Expect(reply.Err).To(BeNil())
				Expect(reply.Return).To(MatchJSON(`{}`))
				Expect(reply.ID).To(MatchJSON(id))
				reply, err = agent.ReadReply(ctx)
				Expect(err).NotTo(HaveOccurred())
				Expect(reply.Err).To(Equal(&qga.Error{Class: "GenericError", Desc: fmt.Sprintf("handle '%d' has not been found", handles[i])}))
				Expect(reply.ID).To(MatchJSON(id), "the id comes back with a command's error too")
			}
			By("the console sees the agent holding the file no more")
			Expect(gfAgentOpenFiles(ctx, guest)).NotTo(ContainElement(path))

			By("a parse error carries no id, even when the id was read before the error")
			Expect(agent.Send(ctx, []byte(`{"id": 5, "execute": "guest-ping",}`+"\n"+`{"execute": "guest-ping", "id": "next"}`+"\n"))).To(Succeed())
			reply, err := agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Err).To(Equal(&qga.Error{Class: "GenericError", Desc: "JSON parse error, expecting value"}))
			Expect(reply.ID).To(BeNil())
			reply, err = agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.ID).To(MatchJSON(`"next"`))
		}, NodeTimeout(3*time.Minute))

	It("sends a guest-file-read of the 48 MiB cap whole, in one reply that matches the console's sha256",
		cmdLabel("guest-file-open", "guest-file-read", "guest-file-close"), func(ctx SpecContext) {
			agent := guest.Agent()
			path := protoDir + "/big"
			By("the console writes 48 MiB, 48 different rotations of 1 MiB of random bytes, and their sha256")
			// /dev/urandom gives about 1.5 MB/s under TCG; rotations are as good at showing a
			// piece of the reply lost, repeated or out of place, and take a second.
			_, err := guest.Console().RunOK(ctx, fmt.Sprintf(
				`dd if=/dev/urandom of=%[1]s.r bs=1048576 count=1 2>/dev/null && i=0 && while [ $i -lt 48 ]; do `+
					`o=$((i*21841)); tail -c +$((o+1)) %[1]s.r; head -c $o %[1]s.r; i=$((i+1)); done > %[1]s && rm %[1]s.r`, path))
			Expect(err).NotTo(HaveOccurred())
			Expect(gfConsoleSize(ctx, guest, path)).To(Equal(int64(protoBigSize)))
			want := consoleSHA256(ctx, guest, path)

			h := gfOpen(ctx, agent, path, "r")
			By("one guest-file-read of 48 MiB: a single reply line of 64 MiB of base64, with the request's id")
			Expect(agent.Send(ctx, []byte(fmt.Sprintf(`{"execute": "guest-file-read", "arguments": {"handle": %d, "count": %d}, "id": "big"}`+"\n", h, protoBigSize)))).To(Succeed())
			reply, err := agent.ReadReply(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(reply.Err).To(BeNil())
			Expect(reply.ID).To(MatchJSON(`"big"`))
			Expect(len(reply.Raw)).To(BeNumerically(">", protoBigSize/3*4), "the whole base64 is in this one line")
			var r gfReadReply
			Expect(json.Unmarshal(reply.Return, &r)).To(Succeed())
			r.data = gfUnB64(r.BufB64)
			Expect(r.Count).To(Equal(int64(protoBigSize)))
			Expect(r.data).To(HaveLen(protoBigSize))
			Expect(r.EOF).To(BeFalse(), "the read stopped exactly at the end, without meeting it")
			By("its bytes have the sha256 the console computed")
			Expect(gfSHA256(r.data)).To(Equal(want))
			big = r.data

			By("the next read meets the end")
			r = gfRead(ctx, agent, h, protoBigSize)
			Expect(r.Count).To(BeZero())
			Expect(r.EOF).To(BeTrue())
			gfClose(ctx, agent, h)

			By("a file of 5 MiB + 7 bytes read with the 48 MiB count comes whole with eof, matching the console")
			mid := protoDir + "/mid"
			const midSize = 5<<20 + 7
			_, err = guest.Console().RunOK(ctx, fmt.Sprintf("head -c %d %s > %s", midSize, path, mid))
			Expect(err).NotTo(HaveOccurred())
			Expect(consoleSHA256(ctx, guest, mid)).To(Equal(gfSHA256(big[:midSize])))
			h = gfOpen(ctx, agent, mid, "r")
			r = gfRead(ctx, agent, h, protoBigSize)
			Expect(r.Count).To(Equal(int64(midSize)))
			Expect(r.EOF).To(BeTrue())
			Expect(gfSHA256(r.data)).To(Equal(gfSHA256(big[:midSize])))
			gfClose(ctx, agent, h)
		}, NodeTimeout(5*time.Minute))

	It("keeps answering after the host closes its socket in the middle of a large reply",
		cmdLabel("guest-file-open", "guest-file-read", "guest-sync-delimited", "guest-ping"), func(ctx SpecContext) {
			Expect(big).To(HaveLen(protoBigSize), "needs the file of the 48 MiB spec")
			agent := guest.Agent()
			path := protoDir + "/big"
			pids := gfAgentPids(ctx, guest)
			h := gfOpen(ctx, agent, path, "r")
			protoStartStuckRead(ctx, guest, agent, h, path)

			By("closing the host's end of the channel and connecting again")
			Expect(agent.Reconnect(ctx)).To(Succeed())
			By("the agent answers after a sync, which skips whatever of the old reply still comes")
			Expect(agent.SyncUntil(ctx, 30*time.Second)).To(Succeed())
			Expect(agent.Call(ctx, "guest-ping", nil, nil)).To(Succeed())
			By("and reads the file correctly on a new handle")
			h2 := gfOpen(ctx, agent, path, "r")
			Expect(h2).To(BeNumerically(">", h))
			r := gfRead(ctx, agent, h2, 1<<20)
			Expect(r.data).To(Equal(big[:1<<20]))
			gfClose(ctx, agent, h2)
			By("the console shows the same agent process: a host disconnect is no reason to exit")
			Expect(gfAgentPids(ctx, guest)).To(Equal(pids))
		}, NodeTimeout(5*time.Minute))

	// Last: it replaces the port (and with the reference, the agent process).
	It("recovers when its port is hot-unplugged over QMP in the middle of a large reply",
		cmdLabel("guest-file-open", "guest-file-read", "guest-sync-delimited", "guest-ping"), func(ctx SpecContext) {
			Expect(big).To(HaveLen(protoBigSize), "needs the file of the 48 MiB spec")
			agent := guest.Agent()
			path := protoDir + "/big"
			h := gfOpen(ctx, agent, path, "r")
			protoStartStuckRead(ctx, guest, agent, h, path)

			By("device_del of the port while the agent is sending: QMP reports DEVICE_DELETED")
			Expect(guest.DetachAgent(ctx)).To(Succeed())
			By("the console sees the port's device node gone")
			Eventually(ctx, func(ctx context.Context) bool {
				return gfConsoleExists(ctx, guest, "/dev/virtio-ports/"+vm.AgentPortName)
			}).Should(BeFalse())

			By("re-plugging the port: QMP reports VSERPORT_CHANGE open, and the agent syncs and answers")
			agent, err := guest.AttachAgent(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(agent.Call(ctx, "guest-ping", nil, nil)).To(Succeed())
			By("a new handle reads the file correctly, numbered after the old one")
			h2 := gfOpen(ctx, agent, path, "r")
			Expect(h2).To(BeNumerically(">", h))
			r := gfRead(ctx, agent, h2, 1<<20)
			Expect(r.data).To(Equal(big[:1<<20]))
			gfClose(ctx, agent, h2)
			By("the console shows one agent process, not a stuck one beside a new one")
			Expect(gfAgentPids(ctx, guest)).To(HaveLen(1))
		}, NodeTimeout(5*time.Minute))
})

// protoReadUntilID reads replies up to the one whose id is the JSON string id, and returns the
// error descs that came before it (each a GenericError without an id) and that reply.
func protoReadUntilID(ctx context.Context, agent *qga.Client, id string) ([]string, *qga.Reply) {
	GinkgoHelper()
	want, _ := json.Marshal(id)
	var descs []string
	for range 10000 {
		reply, err := agent.ReadReply(ctx)
		Expect(err).NotTo(HaveOccurred())
		if reply.ID != nil && string(reply.ID) == string(want) {
			return descs, reply
		}
		Expect(reply.Err).NotTo(BeNil(), "only errors may come before the reply with id %s, got %s", id, reply.Raw)
		Expect(reply.Err.Class).To(Equal("GenericError"), "reply %s", reply.Raw)
		Expect(reply.ID).To(BeNil(), "reply %s", reply.Raw)
		descs = append(descs, reply.Err.Desc)
	}
	Fail("no reply with id " + id + " within 10000 replies")
	return nil, nil
}

// protoStartStuckRead sends a 16 MiB guest-file-read on h and does not read the reply, then
// waits until the console sees that the agent has read those 16 MiB through that handle: the
// agent is then sending a 21 MiB reply nobody reads, which no buffer on the way holds, so it
// is stuck in the middle of it.
func protoStartStuckRead(ctx context.Context, guest *vm.VM, agent *qga.Client, h int64, path string) {
	GinkgoHelper()
	By("sending a 16 MiB guest-file-read and not reading the reply")
	Expect(agent.Send(ctx, []byte(fmt.Sprintf(`{"execute": "guest-file-read", "arguments": {"handle": %d, "count": %d}}`+"\n", h, protoStuckCount)))).To(Succeed())
	By("the console sees the agent's descriptor of the file at offset 16 MiB: it has read its part and is sending")
	Eventually(ctx, func(ctx context.Context) []int64 {
		return protoAgentFileOffsets(ctx, guest, path)
	}).WithPolling(200 * time.Millisecond).Should(ContainElement(int64(protoStuckCount)))
}

// protoAgentFileOffsets are the file offsets (from /proc/PID/fdinfo) of the agent's open
// descriptors of path.
func protoAgentFileOffsets(ctx context.Context, guest *vm.VM, path string) []int64 {
	GinkgoHelper()
	pids := gfAgentPids(ctx, guest)
	Expect(pids).To(HaveLen(1))
	out, err := guest.Console().RunOK(ctx, fmt.Sprintf(
		`cd /proc/%s/fd && for f in *; do [ "$(readlink $f)" = %s ] && sed -n 's/^pos:[[:space:]]*//p' ../fdinfo/$f; done; true`,
		pids[0], path))
	Expect(err).NotTo(HaveOccurred())
	var offs []int64
	for _, f := range strings.Fields(out) {
		n, err := strconv.ParseInt(f, 10, 64)
		Expect(err).NotTo(HaveOccurred(), "fdinfo pos %q", f)
		offs = append(offs, n)
	}
	return offs
}
