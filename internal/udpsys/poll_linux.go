package udpsys

import (
	"fmt"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Token is what a Poller reports a ready descriptor by: a kind and an index
// of the caller's, not a pointer, which the kernel cannot hold for the Go
// collector.
type Token struct{ Kind, Index int32 }

// Event is a ready descriptor, as Poller.Event reports it.
type Event struct {
	Token Token
	// Readable: data to read, or an error to read (a connected UDP socket's
	// ICMP report); Writable: room in the send buffer.
	Readable, Writable bool
}

// Poller is an event loop's wait: an epoll instance for the loop's
// descriptors, an eventfd by which any goroutine wakes it (Wake), and a
// timerfd that ticks at a fixed period. It is for one loop's goroutine,
// but Wake, which any goroutine may call.
type Poller struct {
	epfd, wake, tick int
	events           []unix.EpollEvent
	buf, one         [8]byte
	// wakeMu guards wake against its close: other goroutines call Wake at
	// any time, and a closed number may name another file by then.
	wakeMu     sync.RWMutex
	wakeClosed bool
}

// Tokens of the Poller's own descriptors, of a Kind no caller uses.
const (
	kindWake int32 = -1 - iota
	kindTick
)

// NewPoller returns a Poller that reports up to maxEvents events a wait
// and ticks every tick.
func NewPoller(maxEvents int, tick time.Duration) (*Poller, error) {
	p := &Poller{epfd: -1, wake: -1, tick: -1, events: make([]unix.EpollEvent, maxEvents)}
	p.one[0] = 1
	var err error
	if p.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if p.wake, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		p.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if p.tick, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC); err != nil {
		p.Close()
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	ts := unix.NsecToTimespec(int64(tick))
	if err := unix.TimerfdSettime(p.tick, 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil); err != nil {
		p.Close()
		return nil, fmt.Errorf("timerfd_settime: %w", err)
	}
	for _, w := range []struct {
		fd   int
		kind int32
	}{{p.wake, kindWake}, {p.tick, kindTick}} {
		if err := p.Add(w.fd, Token{Kind: w.kind}); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// Add watches fd for data to read, reporting it by t.
func (p *Poller) Add(fd int, t Token) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: t.Kind, Pad: t.Index}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// Set changes what the Poller waits for on fd, which Add watches: data to
// read, room to write, or both.
func (p *Poller) Set(fd int, t Token, read, write bool) error {
	var events uint32
	if read {
		events |= unix.EPOLLIN
	}
	if write {
		events |= unix.EPOLLOUT
	}
	ev := unix.EpollEvent{Events: events, Fd: t.Kind, Pad: t.Index}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl mod: %w", err)
	}
	return nil
}

// Remove stops watching fd.
func (p *Poller) Remove(fd int) { unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil) }

// Wait returns how many events are ready, and whether the Poller was woken
// (Wake) and ticked since the last Wait; Event(i) reports the i-th event.
// Under load some are almost always ready, and a non-blocking epoll_pwait
// through RawSyscall finds them without handing the thread's P to the
// scheduler and taking it back; only an idle loop blocks, through the
// scheduler-aware call, without a timeout (the tick wakes it), so that no
// wait arms and cancels a kernel timer of its own, unless soon asks for a
// wait of a millisecond at most. An interrupted wait returns no event.
func (p *Poller) Wait(soon bool) (n int, woken, ticked bool, err error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(p.epfd),
		uintptr(unsafe.Pointer(&p.events[0])), uintptr(len(p.events)), 0, 0, 0)
	n = int(r)
	if errno != 0 || n == 0 {
		timeout := -1
		if soon {
			timeout = 1
		}
		if n, err = unix.EpollWait(p.epfd, p.events, timeout); err == unix.EINTR {
			return 0, false, false, nil
		} else if err != nil {
			return 0, false, false, err
		}
	}
	// The Poller's own descriptors go to the end, out of the caller's way.
	for i := 0; i < n; {
		switch p.events[i].Fd {
		case kindWake:
			unix.Read(p.wake, p.buf[:])
			woken = true
		case kindTick:
			unix.Read(p.tick, p.buf[:])
			ticked = true
		default:
			i++
			continue
		}
		n--
		p.events[i], p.events[n] = p.events[n], p.events[i]
	}
	return n, woken, ticked, nil
}

// Event returns the i-th event of the last Wait.
func (p *Poller) Event(i int) Event {
	ev := &p.events[i]
	return Event{
		Token:    Token{Kind: ev.Fd, Index: ev.Pad},
		Readable: ev.Events&(unix.EPOLLIN|unix.EPOLLERR) != 0,
		Writable: ev.Events&unix.EPOLLOUT != 0,
	}
}

// Wake makes the Poller's current or next Wait return woken. Any goroutine
// may call it, also after Close, when it does nothing.
func (p *Poller) Wake() {
	p.wakeMu.RLock()
	if !p.wakeClosed {
		unix.Write(p.wake, p.one[:])
	}
	p.wakeMu.RUnlock()
}

// Close closes the Poller's descriptors.
func (p *Poller) Close() {
	p.wakeMu.Lock()
	if p.wake >= 0 && !p.wakeClosed {
		unix.Close(p.wake)
	}
	p.wakeClosed = true
	p.wakeMu.Unlock()
	for _, fd := range []int{p.tick, p.epfd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
