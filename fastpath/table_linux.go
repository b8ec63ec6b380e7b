package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/udpmux/udpmux/internal/rate"
)

// Entry is one session's place in the table. The proxy holds it while the
// session lives; its methods are safe from any goroutine and take no lock.
type Entry struct {
	state atomic.Uint32
	// counts is what the kernel forwarded for the session since it was
	// first installed (every element's counter, moves included), as of the
	// last poll.
	rx, rxBytes, tx, txBytes atomic.Uint64

	// Guarded by Table.mu: the flow the proxy wants (want), whether it
	// wants it gone, whether the entry waits in the queue, and whether a
	// session of this process holds it (an adopted one that none claimed
	// is an orphan).
	want     Flow
	gone     bool
	queued   bool
	claimed  bool
	deferred bool // counted once in Stats.Deferred

	// What the kernel has (have, once installed), the counters of its
	// elements as last read, what earlier elements (before a move) had
	// counted, and when its counters last moved. Guarded by Table.mu too;
	// only the table's goroutine changes them.
	have      Flow
	installed bool
	last      Counts
	base      Counts
	active    time.Time
}

// State returns where the entry stands.
func (e *Entry) State() State { return State(e.state.Load()) }

// Counts returns what the kernel has forwarded for the session, as of the
// table's last poll.
func (e *Entry) Counts() Counts {
	return Counts{e.rx.Load(), e.rxBytes.Load(), e.tx.Load(), e.txBytes.Load()}
}

func (e *Entry) publish() {
	c := e.base.Add(e.last)
	e.rx.Store(c.RxPackets)
	e.rxBytes.Store(c.RxBytes)
	e.tx.Store(c.TxPackets)
	e.txBytes.Store(c.TxBytes)
}

// ipUDPHeader is the bytes of an IPv4 header without options and a UDP
// header, which the elements' counters count and udpmux's do not.
const ipUDPHeader = 28

// Table is udpmux's nftables table and the goroutine that keeps it.
type Table struct {
	cfg   Config
	log   *slog.Logger
	conn  *nftables.Conn
	table *nftables.Table
	fwd   [numKinds]*nftables.Set
	src   *nftables.Set
	limit rate.Limiter
	epoch time.Time // origin of limit's clock, which is monotonic: a step of the wall clock neither freezes nor floods installs

	mu      sync.Mutex
	pending []*Entry
	// byKey holds every key of the elements the kernel has or will have,
	// fwd and src alike (they never collide: fwd keys end at a local
	// address, src keys at a remote one), to the entry they are for.
	byKey     map[key]*Entry
	entries   int // live entries: wanted or installed
	installed int // entries the kernel has
	orphans   int // adopted entries no session claimed
	retired   Counts

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	gen  atomic.Uint64 // polls done
	// sweepSrc makes the next poll read the map of source rewrites too,
	// for strays (it has no counters, and the kernel's dump of a map costs
	// time that grows with the square of its size): after Open, after a
	// failed transaction, and every srcSweepEvery polls. The table's
	// goroutine's.
	sweepSrc bool
	// rateSpent, within one apply, says the rate has refused an install.
	rateSpent bool
	// kinds are those the chains match, to make the table again if it
	// goes (remake).
	kinds []Kind

	st struct {
		installs, moves, removals, errors                   atomic.Uint64
		refusedFull, refusedConflict, refusedLocal          atomic.Uint64
		deferred, orphansRemoved, strays, reinstalls, polls atomic.Uint64
		remade                                              atomic.Uint64
		rx, rxBytes, tx, txBytes                            atomic.Uint64
		offloaded, adopted                                  atomic.Int64
	}
}

// Open opens the nftables table cfg.Name, creating it, or adopting it as a
// predecessor left it (an upgrade, a crash): its elements stay in the
// kernel, which goes on forwarding, and become orphan entries that the
// sessions of this process claim (Claim) or that go after cfg.OrphanIdle
// without traffic. The chains' rules are replaced in the same transaction,
// without a gap. It needs CAP_NET_ADMIN and nf_tables in the kernel (see
// Check). Open's caller must be in the network namespace the table is for;
// the Table may be used from any goroutine after.
func Open(cfg Config, log *slog.Logger) (*Table, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	if cfg.Rate <= 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.OrphanIdle <= 0 {
		cfg.OrphanIdle = DefaultOrphanIdle
	}
	if cfg.TTL == 0 {
		cfg.TTL = defaultTTL()
	}
	if log == nil {
		log = slog.Default()
	}
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("fastpath: netlink: %w", err)
	}
	t := &Table{cfg: cfg, log: log, conn: conn, byKey: make(map[key]*Entry),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), epoch: time.Now()}
	t.limit.Init(cfg.Rate)
	adopted, err := t.adopt()
	if err != nil {
		conn.CloseLasting()
		return nil, err
	}
	kinds := append([]Kind(nil), cfg.Kinds...)
	for _, f := range adopted {
		kinds = append(kinds, f.flow.Kind)
	}
	t.kinds = uniqueKinds(kinds)
	if err := t.schema(conn, t.kinds); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("fastpath: table %s: %w", cfg.Name, err)
	}
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("fastpath: table %s: %w", cfg.Name, err)
	}
	now := time.Now()
	for _, a := range adopted {
		e := &Entry{want: a.flow, have: a.flow, installed: true, last: a.counts, active: now}
		e.state.Store(uint32(Installed))
		e.publish()
		for _, el := range t.elements(a.flow) {
			t.byKey[el.key] = e
		}
		t.entries++
		t.installed++
		t.orphans++
	}
	t.st.offloaded.Store(int64(t.installed))
	t.st.adopted.Store(int64(t.orphans))
	if len(adopted) > 0 {
		log.Info("fast path: adopted the sessions a predecessor left in the kernel", "table", cfg.Name, "sessions", len(adopted))
	}
	go t.run()
	return t, nil
}

func uniqueKinds(ks []Kind) []Kind {
	var seen [numKinds]bool
	var out []Kind
	for _, f := range ks {
		for _, k := range f.Family().kinds() {
			if k < numKinds && !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	return out
}

// defaultTTL returns the host's net.ipv4.ip_default_ttl, or 64.
func defaultTTL() uint8 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_default_ttl")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 && n < 256 {
			return uint8(n)
		}
	}
	return 64
}

// adopted is a session found in the table at Open.
type adopted struct {
	flow   Flow
	counts Counts
}

// counter returns el's packets and bytes.
func counter(el nftables.SetElement) expr.Counter {
	if el.Counter != nil {
		return *el.Counter
	}
	return expr.Counter{}
}

// adopt reads the sessions a predecessor left in an existing table: each
// fwd element of direction up, with its src and down elements. Elements of
// no complete session are left for the next poll to remove.
func (t *Table) adopt() ([]adopted, error) {
	tb, err := t.conn.ListTableOfFamily(t.cfg.Name, nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil // none yet (the library wraps ENOENT in its own words)
	}
	src := make(map[key]netip.AddrPort)
	if els, err := t.conn.GetSetElements(&nftables.Set{Table: tb, Name: "src"}); err == nil {
		for _, el := range els {
			if len(el.Key) == keyLen && len(el.Val) == srcLen {
				src[key(el.Key)] = getAddrPort(el.Val)
			}
		}
	}
	var out []adopted
	for k := range numKinds {
		els, err := t.conn.GetSetElements(&nftables.Set{Table: tb, Name: "fwd_" + k.String(), IsMap: true})
		if err != nil {
			continue // a map this version has and the predecessor's had not
		}
		type downEl struct {
			to netip.AddrPort
			c  expr.Counter
		}
		down := make(map[key]downEl)
		var ups []nftables.SetElement
		for _, el := range els {
			if len(el.Key) != keyLen || len(el.Val) != fwdLen {
				continue
			}
			if binary.BigEndian.Uint32(el.Val[8:12]) == dirDown {
				down[key(el.Key)] = downEl{getAddrPort(el.Val[0:8]), counter(el)}
			} else {
				ups = append(ups, el)
			}
		}
		for _, el := range ups {
			client, local := key(el.Key).addrs()
			backend := getAddrPort(el.Val[0:8])
			source, ok := src[tupleKey(client, backend)]
			if !ok {
				continue
			}
			d, ok := down[tupleKey(backend, source)]
			if !ok || d.to != client {
				continue
			}
			up := counter(el)
			up.Bytes -= min(up.Bytes, ipUDPHeader*up.Packets)
			d.c.Bytes -= min(d.c.Bytes, ipUDPHeader*d.c.Packets)
			out = append(out, adopted{Flow{Kind: k, Client: client, Local: local, Source: source, Backend: backend},
				Counts{up.Packets, up.Bytes, d.c.Packets, d.c.Bytes}})
		}
	}
	return out, nil
}

// Offload asks the kernel to forward f's data, and returns the session's
// entry: Pending until the table's goroutine has installed it (at Config's
// Rate), or nil and an error if f cannot be forwarded (ErrLocalBackend, not
// IPv4) or Max sessions are forwarded already. It never waits.
func (t *Table) Offload(f Flow) (*Entry, error) {
	if err := f.valid(); err != nil {
		t.st.refusedLocal.Add(1)
		return nil, err
	}
	f = f.unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.entries >= t.cfg.Max {
		t.st.refusedFull.Add(1)
		return nil, ErrFull
	}
	t.entries++
	e := &Entry{want: f, claimed: true}
	t.queue(e)
	return e, nil
}

// ErrFull: the table forwards Config.Max sessions already.
var ErrFull = errors.New("fastpath: the table is full (sessions.max)")

// Claim returns the entry of a session this process has taken over (an
// upgrade's), if the kernel forwards it already: one found at Open, or
// installed by the predecessor since, which the next poll finds. f's kind
// may be another of the entry's family (the predecessor's session may have
// been on another OpenVPN key). It returns nil if the table has no such
// session.
func (t *Table) Claim(f Flow) *Entry {
	if f.valid() != nil {
		return nil
	}
	f = f.unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byKey[tupleKey(f.Client, f.Local)]
	if e == nil {
		// The predecessor moved the session's client after the kernel's
		// elements were read here (a move it had not applied yet): the
		// entry is the one of the session's upstream socket, and moves to
		// the client's address. Left as an orphan, its elements would
		// send the backend's datagrams to the old address.
		e = t.byKey[tupleKey(f.Backend, f.Source)]
	}
	if e == nil || e.claimed || e.gone || !sameSession(e.want, f) {
		return nil
	}
	e.claimed = true
	t.orphans--
	if e.want.Client != f.Client {
		e.want.Client = f.Client
		t.queue(e)
	}
	return e
}

// sameSession reports whether flows a and b are of one session: the same
// family of kinds, listener address, upstream socket and backend; the
// client may have moved.
func sameSession(a, b Flow) bool {
	a, b = a.family(), b.family()
	a.Client = b.Client
	return a == b
}

// Move has the kernel forward e's session for its client's new address
// to: the elements of the old address go, in the same transaction as the
// new ones come.
func (t *Table) Move(e *Entry, to netip.AddrPort) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.gone {
		return
	}
	e.want.Client = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	t.queue(e)
}

// SetKind has the kernel forward e's session's datagrams of kind k, of the
// same family, instead of those of the kind it has (an OpenVPN session
// whose data went on to another key): the old kind's elements go in the
// same transaction as the new ones come.
func (t *Table) SetKind(e *Entry, k Kind) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.gone || k.Family() != e.want.Kind.Family() {
		return
	}
	e.want.Kind = k
	t.queue(e)
}

// Remove takes e's session out of the kernel; its datagrams reach udpmux
// again once the table's goroutine has removed its elements.
func (t *Table) Remove(e *Entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.gone {
		return
	}
	e.gone = true
	t.queue(e)
}

// queue puts e in the queue for the table's goroutine. t.mu is held.
func (t *Table) queue(e *Entry) {
	if !e.queued {
		e.queued = true
		t.pending = append(t.pending, e)
	}
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Generation counts the polls of the counters, so that a reader of the
// entries' counters looks again only when it has changed.
func (t *Table) Generation() uint64 { return t.gen.Load() }

// Stats returns the table's counters.
func (t *Table) Stats() Stats {
	return Stats{
		Offloaded: int(t.st.offloaded.Load()), Adopted: int(t.st.adopted.Load()),
		Installs: t.st.installs.Load(), Moves: t.st.moves.Load(), Removals: t.st.removals.Load(), Errors: t.st.errors.Load(),
		RefusedFull: t.st.refusedFull.Load(), RefusedConflict: t.st.refusedConflict.Load(), RefusedLocal: t.st.refusedLocal.Load(),
		Deferred: t.st.deferred.Load(), OrphansRemoved: t.st.orphansRemoved.Load(), Strays: t.st.strays.Load(), Reinstalls: t.st.reinstalls.Load(), Remade: t.st.remade.Load(), Polls: t.st.polls.Load(),
		RxPackets: t.st.rx.Load(), RxBytes: t.st.rxBytes.Load(), TxPackets: t.st.tx.Load(), TxBytes: t.st.txBytes.Load(),
	}
}

// Close stops the table's goroutine. With keep (a successor takes over)
// the table stays in the kernel, after what was queued has been applied,
// and the kernel goes on forwarding; without it (udpmux stops for good)
// the table is deleted, with every element.
func (t *Table) Close(keep bool) error {
	close(t.stop)
	<-t.done
	defer t.conn.CloseLasting()
	if keep {
		t.apply(time.Now())
		return nil
	}
	t.conn.DelTable(t.table)
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("fastpath: delete table %s: %w", t.cfg.Name, err)
	}
	return nil
}

// run applies what is queued as it comes, and polls the counters.
func (t *Table) run() {
	defer close(t.done)
	tick := time.NewTimer(t.cfg.Poll)
	defer tick.Stop()
	// Installs put off by the rate go in at the next tenth of a second.
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-t.wake:
		case <-retry.C:
		case now := <-tick.C:
			t.poll(now)
			tick.Reset(t.pollWait(time.Since(now)))
		}
		t.apply(time.Now())
	}
}

// change is what one entry's transaction does.
type change struct {
	e       *Entry
	del     bool // delete e.have's elements
	add     bool // add want's
	want    Flow
	removed bool // e is gone for good
	refused bool // for clashing keys
}

// apply turns the queue into transactions of at most maxTransaction
// changes.
func (t *Table) apply(now time.Time) {
	t.mu.Lock()
	queue := t.pending
	t.pending = nil
	var changes []change
	var deferred []*Entry
	t.rateSpent = false
	for _, e := range queue {
		var requeue bool
		changes, requeue = t.plan(changes, e, now)
		if requeue {
			deferred = append(deferred, e) // still queued
			continue
		}
		e.queued = false
	}
	// Installs the rate put off wait for the goroutine's next tick, ahead
	// of what came since; requeueing them with a wake-up would spin the
	// goroutine through the whole queue until the rate allows them.
	t.pending = append(deferred, t.pending...)
	t.mu.Unlock()
	for len(changes) > 0 {
		n := min(len(changes), maxTransaction)
		t.commit(changes[:n])
		changes = changes[n:]
	}
}

// maxTransaction bounds the changes in one transaction: netlink refuses a
// larger message than its socket buffers hold ("message too long"), and
// the acknowledgements of a larger one overflow the receive buffer
// (ENOBUFS), both seen with thousands of changes at once (a burst of
// idle sessions ending, BenchmarkInstall at an unbounded rate).
const maxTransaction = 64

// commit applies changes in one transaction (and, should that fail, one
// per entry, so that one bad entry fails alone).
func (t *Table) commit(changes []change) {
	for _, c := range changes {
		t.batch(c)
	}
	if err := t.conn.Flush(); err != nil {
		t.st.errors.Add(1)
		t.sweepSrc = true
		t.log.Warn("fast path: a transaction failed; applying its changes one by one", "changes", len(changes), "err", err)
		for _, c := range changes {
			t.batch(c)
			if err := t.conn.Flush(); err != nil {
				t.st.errors.Add(1)
				t.failed(c, err)
				continue
			}
			t.done1(c)
		}
		return
	}
	for _, c := range changes {
		t.done1(c)
	}
}

// plan appends e's change to changes, with t.mu held, and claims (or
// releases) its keys in byKey; an orphan in its way goes first. requeue
// says the install waits for the rate.
func (t *Table) plan(changes []change, e *Entry, now time.Time) (out []change, requeue bool) {
	if st := e.State(); st == Removed || st == Refused {
		return changes, false // done with already (an orphan that made way)
	}
	c := change{e: e}
	defer func() {
		if !requeue && (c.del || c.add || c.removed) {
			out = append(out, c)
		}
	}()
	if e.gone {
		t.release(e, e.want)
		if e.installed {
			t.release(e, e.have)
		}
		c.del, c.removed = e.installed, true
		return changes, false
	}
	if e.installed && e.have == e.want {
		return changes, false
	}
	if !e.installed && (t.rateSpent || !t.limit.Allow(int64(now.Sub(t.epoch)))) {
		t.rateSpent = true // for the rest of this apply
		if !e.deferred {
			e.deferred = true
			t.st.deferred.Add(1)
		}
		return changes, true
	}
	for _, el := range t.elements(e.want) {
		other := t.byKey[el.key]
		if other == nil || other == e {
			continue
		}
		if other.claimed || other.gone {
			t.st.refusedConflict.Add(1)
			if e.installed {
				// A move onto another session's keys: out of the kernel,
				// back to userspace.
				t.release(e, e.have)
				c.del, c.removed = true, true
			} else {
				c.removed = true
			}
			e.gone, c.refused = true, true
			return changes, false
		}
		// An orphan a predecessor left for this client: it makes way, its
		// elements deleted in the same transaction, before e's are added.
		other.gone = true
		t.release(other, other.want)
		t.release(other, other.have)
		changes = append(changes, change{e: other, del: other.installed, removed: true})
	}
	if e.installed {
		t.release(e, e.have)
		c.del = true
	}
	for _, el := range t.elements(e.want) {
		t.byKey[el.key] = e
	}
	c.add, c.want = true, e.want
	return changes, false
}

// release forgets f's keys where they are e's; a zero f (what a removal
// wants) has none. t.mu is held.
func (t *Table) release(e *Entry, f Flow) {
	if !f.Client.IsValid() {
		return
	}
	for _, el := range t.elements(f) {
		if t.byKey[el.key] == e {
			delete(t.byKey, el.key)
		}
	}
}

// batch adds c's messages to the connection's batch.
func (t *Table) batch(c change) {
	if c.del {
		for _, el := range t.elements(c.e.have) {
			t.conn.SetDeleteElements(el.set, []nftables.SetElement{{Key: el.key[:]}})
		}
	}
	if c.add {
		for _, el := range t.elements(c.want) {
			t.conn.SetAddElements(el.set, []nftables.SetElement{{Key: el.key[:], Val: el.data}})
		}
	}
}

// done1 records c as applied.
func (t *Table) done1(c change) {
	e := c.e
	t.mu.Lock()
	defer t.mu.Unlock()
	was := e.installed
	if c.del {
		e.base = e.base.Add(e.last)
		e.last = Counts{}
		e.installed = false
	}
	if c.add {
		e.have, e.installed, e.active = c.want, true, time.Now()
		e.state.Store(uint32(Installed))
	}
	switch {
	case c.add && c.del:
		t.st.moves.Add(1)
	case c.add:
		t.st.installs.Add(1)
	case c.del:
		t.st.removals.Add(1)
	}
	if was != e.installed {
		if e.installed {
			t.installed++
		} else {
			t.installed--
		}
		// Now, not at the next poll, which a slow reading (or one that
		// found the table gone and made it again) puts off by seconds.
		t.st.offloaded.Store(int64(t.installed))
	}
	if c.removed {
		t.retire(e)
		if c.refused {
			e.state.Store(uint32(Refused))
		}
	}
}

// retire ends e: it leaves the count of live entries. t.mu is held.
func (t *Table) retire(e *Entry) {
	t.entries--
	t.retired = t.retired.Add(e.base)
	e.state.Store(uint32(Removed))
	if !e.claimed {
		t.orphans--
		t.st.orphansRemoved.Add(1)
	}
}

// failed records that c's transaction failed on its own: the entry is
// refused (its session stays in userspace) and what the kernel may hold of
// it is deleted, element by element; the next poll removes what is left.
func (t *Table) failed(c change, err error) {
	e := c.e
	t.log.Warn("fast path: the kernel refused a session's elements; it stays in userspace",
		"client", c.want.Client, "backend", c.want.Backend, "err", err)
	t.mu.Lock()
	t.release(e, c.want)
	if e.installed {
		t.release(e, e.have)
		e.installed = false
		t.installed--
		t.st.offloaded.Store(int64(t.installed))
	}
	e.gone = true
	if !c.removed {
		t.retire(e)
	}
	e.state.Store(uint32(Refused))
	t.mu.Unlock()
	for _, f := range [...]Flow{e.have, c.want} {
		if f.Client.IsValid() {
			for _, el := range t.elements(f) {
				t.conn.SetDeleteElements(el.set, []nftables.SetElement{{Key: el.key[:]}})
				_ = t.conn.Flush() // an element that is not there is what we want
			}
		}
	}
}

// poll reads every element's counter into its entry, deletes the elements
// of no entry (left by a predecessor, or by a failed transaction), and
// removes orphans idle for OrphanIdle. It runs on the table's goroutine,
// as apply does.
func (t *Table) poll(now time.Time) {
	var stray []element
	seen := make(map[*Entry]bool)
	complete, gone := true, false
	read := func(set *nftables.Set) bool {
		els, err := t.conn.GetSetElements(set)
		if err != nil {
			t.st.errors.Add(1)
			if !t.exists() {
				gone = true
				return false
			}
			t.log.Warn("fast path: reading the counters failed", "map", set.Name, "err", err)
			return false
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, el := range els {
			if len(el.Key) != keyLen {
				continue
			}
			k := key(el.Key)
			e := t.byKey[k]
			if e == nil || !e.installed || !e.hasKey(t, k) {
				stray = append(stray, element{set: set, key: k})
				continue
			}
			if set == t.src {
				continue
			}
			c := counter(el)
			// The kernel counts IP packets; udpmux counts UDP payloads.
			c.Bytes -= min(c.Bytes, ipUDPHeader*c.Packets)
			last := e.last
			if len(el.Val) == fwdLen && binary.BigEndian.Uint32(el.Val[8:12]) == dirDown {
				e.last.TxPackets, e.last.TxBytes = c.Packets, c.Bytes
			} else {
				e.last.RxPackets, e.last.RxBytes = c.Packets, c.Bytes
			}
			if e.last != last {
				e.active = now
			}
			seen[e] = true
		}
		return true
	}
	// Only the maps of this process's kinds: the others have no elements
	// (adopt adds the kinds of those a predecessor left to t.kinds).
	for _, k := range t.kinds {
		complete = read(t.fwd[k]) && complete
	}
	if gone {
		t.remake()
		return
	}
	if t.sweepSrc || t.st.polls.Load()%srcSweepEvery == 0 {
		ok := read(t.src)
		complete = ok && complete
		t.sweepSrc = !ok
	}
	if len(stray) > 0 {
		for _, el := range stray {
			t.conn.SetDeleteElements(el.set, []nftables.SetElement{{Key: el.key[:]}})
		}
		if err := t.conn.Flush(); err != nil {
			t.st.errors.Add(1)
			t.sweepSrc = true
		}
		t.st.strays.Add(uint64(len(stray)))
	}
	t.mu.Lock()
	total := t.retired
	for e := range seen {
		e.publish()
	}
	for k, e := range t.byKey {
		if k != tupleKey(e.want.Client, e.want.Local) {
			continue // each entry once: by its first key
		}
		total = total.Add(e.base).Add(e.last)
		if complete && e.installed && !e.gone && !seen[e] {
			// Its elements are gone from the kernel (someone deleted them, or
			// a predecessor's last poll took them for strays): again.
			e.installed = false
			t.installed--
			t.st.reinstalls.Add(1)
			t.queue(e)
			continue
		}
		if !e.claimed && !e.gone && e.installed && now.Sub(e.active) >= t.cfg.OrphanIdle {
			e.gone = true
			t.queue(e)
		}
	}
	t.st.offloaded.Store(int64(t.installed))
	t.st.adopted.Store(int64(t.orphans))
	t.mu.Unlock()
	t.st.rx.Store(total.RxPackets)
	t.st.rxBytes.Store(total.RxBytes)
	t.st.tx.Store(total.TxPackets)
	t.st.txBytes.Store(total.TxBytes)
	t.st.polls.Add(1)
	t.gen.Add(1)
}

// pollShare bounds the table goroutine's time spent reading counters: it
// waits at least pollShare times as long as a reading took before the
// next (Config.Poll).
const pollShare = 20

// pollWait is how long to wait for the next reading after one that took
// took.
func (t *Table) pollWait(took time.Duration) time.Duration {
	d := max(t.cfg.Poll, pollShare*took)
	if t.cfg.MaxPoll > 0 {
		d = min(d, t.cfg.MaxPoll)
	}
	return d
}

// exists reports whether the kernel has the table (true when it cannot
// say): google/nftables does not wrap its errors, so a failed reading does
// not tell a deleted table from other failures.
func (t *Table) exists() bool {
	tables, err := t.conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return true
	}
	for _, tb := range tables {
		if tb.Name == t.cfg.Name {
			return true
		}
	}
	return false
}

// remake makes the table again after someone deleted it (a firewall
// reload whose rule set begins with "flush ruleset" takes every table),
// and has every session's elements installed again, at the install rate:
// meanwhile their datagrams reach udpmux's sockets, as without the fast
// path. The table's goroutine's.
func (t *Table) remake() {
	t.log.Warn("fast path: the table is gone (deleted by another program, such as a firewall reload); making it again", "table", t.cfg.Name)
	if err := t.schema(t.conn, t.kinds); err != nil {
		t.log.Warn("fast path: making the table again failed", "table", t.cfg.Name, "err", err)
		return
	}
	if err := t.conn.Flush(); err != nil {
		t.log.Warn("fast path: making the table again failed", "table", t.cfg.Name, "err", err)
		return
	}
	t.st.remade.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, e := range t.byKey {
		if k != tupleKey(e.want.Client, e.want.Local) || !e.installed {
			continue // each entry once, by its first key
		}
		e.installed = false
		t.installed--
		t.st.reinstalls.Add(1)
		t.queue(e)
	}
	t.st.offloaded.Store(int64(t.installed))
}

// srcSweepEvery is how often, in polls, a poll reads the source rewrites
// for strays when nothing failed.
const srcSweepEvery = 10

// hasKey reports whether k is one of the keys of the elements the kernel
// has for e. t.mu is held.
func (e *Entry) hasKey(t *Table, k key) bool {
	for _, el := range t.elements(e.have) {
		if el.key == k {
			return true
		}
	}
	return false
}

// Orphan returns the flow a predecessor left in the table for client on
// local, if no session of this process has claimed it: a crashed
// predecessor's, which a new session for that client takes over (Claim)
// by binding its socket to the flow's source.
func (t *Table) Orphan(client, local netip.AddrPort) (Flow, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	u := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
	e := t.byKey[tupleKey(u(client), u(local))]
	if e == nil || e.claimed || e.gone || !e.installed {
		return Flow{}, false
	}
	return e.want, true
}
