package relaytest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RedisNode is one redis-server process of a test.
type RedisNode struct {
	Addr string
	cmd  *exec.Cmd
	name string
	args []string // the whole command line, to start it again
}

// Kill stops the node with SIGKILL, as a crash or a lost machine would.
func (n *RedisNode) Kill() { n.cmd.Process.Signal(syscall.SIGKILL) }

// Port is the node's port.
func (n *RedisNode) Port() string { _, p, _ := net.SplitHostPort(n.Addr); return p }

func startRedis(t testing.TB, name string, args ...string) *RedisNode {
	t.Helper()
	Need(t, "/usr/bin/redis-server")
	n := &RedisNode{Addr: freeAddr(t)}
	dir := filepath.Join(t.TempDir(), name)
	os.MkdirAll(dir, 0o700)
	base := []string{"--bind", "127.0.0.1", "--port", n.Port(), "--save", "", "--appendonly", "no", "--dir", dir}
	n.name, n.args = name, append(base, args...)
	n.Restart(t)
	return n
}

// StartRedis runs a redis-server of the test's own, which it may kill
// and start again without disturbing the other tests' server.
func StartRedis(t testing.TB) *RedisNode { return startRedis(t, "own") }

// Restart starts the node again, on its address, after Kill (its data is
// gone: it saves nothing).
func (n *RedisNode) Restart(t testing.TB) {
	t.Helper()
	if n.cmd != nil {
		n.cmd.Wait()
	}
	n.cmd = exec.Command("/usr/bin/redis-server", n.args...)
	startLogged(t, "redis-"+n.name, n.cmd)
	waitRedis(t, n.Addr, "PING", "PONG")
}

// waitRedis waits until the server at addr answers cmd with a reply that
// contains want.
func waitRedis(t testing.TB, addr, cmd, want string) {
	t.Helper()
	answered := WithinEvery(30*time.Second, 50*time.Millisecond, func() bool {
		out, _ := RedisCLI(addr, strings.Fields(cmd)...)
		return strings.Contains(out, want)
	})
	if !answered {
		t.Fatalf("redis %s: no %q in answer to %s", addr, want, cmd)
	}
}

// RedisCLI runs one redis-cli command against addr.
func RedisCLI(addr string, args ...string) (string, error) {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("/usr/bin/redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	return string(out), err
}

// SentinelGroup is a master, its replica and three Sentinels watching it
// as "mymaster" (quorum 2, down after 1 s), private to the test.
type SentinelGroup struct {
	Master, Replica *RedisNode
	Sentinels       []*RedisNode
}

// SentinelAddrs are the Sentinels' addresses.
func (g *SentinelGroup) SentinelAddrs() []string {
	var out []string
	for _, s := range g.Sentinels {
		out = append(out, s.Addr)
	}
	return out
}

// MasterAddr asks a Sentinel which node is the master now.
func (g *SentinelGroup) MasterAddr() string {
	for _, s := range g.Sentinels {
		out, err := RedisCLI(s.Addr, "SENTINEL", "get-master-addr-by-name", "mymaster")
		if f := strings.Fields(out); err == nil && len(f) == 2 {
			return net.JoinHostPort(f[0], f[1])
		}
	}
	return ""
}

func StartSentinelGroup(t testing.TB) *SentinelGroup {
	t.Helper()
	g := &SentinelGroup{}
	g.Master = startRedis(t, "master")
	g.Replica = startRedis(t, "replica", "--replicaof", "127.0.0.1", g.Master.Port())
	waitRedis(t, g.Replica.Addr, "INFO replication", "master_link_status:up")
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		write(t, conf, fmt.Sprintf("sentinel monitor mymaster 127.0.0.1 %s 2\n"+
			"sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"+
			"sentinel parallel-syncs mymaster 1\n", g.Master.Port()))
		n := &RedisNode{Addr: freeAddr(t)}
		n.cmd = exec.Command("/usr/bin/redis-server", conf, "--sentinel", "--bind", "127.0.0.1", "--port", n.Port(), "--dir", dir)
		startLogged(t, fmt.Sprintf("sentinel-%d", i), n.cmd)
		g.Sentinels = append(g.Sentinels, n)
	}
	for _, s := range g.Sentinels {
		waitRedis(t, s.Addr, "SENTINEL sentinels mymaster", "ip")            // it knows the others
		waitRedis(t, s.Addr, "SENTINEL replicas mymaster", g.Replica.Port()) // and the replica
	}
	return g
}

// RedisCluster is a Redis Cluster of three masters with a replica each,
// private to the test (node timeout 1 s).
type RedisCluster struct {
	Nodes []*RedisNode
}

func (c *RedisCluster) Addrs() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Addr)
	}
	return out
}

// MasterOf returns the node that serves key now.
func (c *RedisCluster) MasterOf(t testing.TB, key string) *RedisNode {
	t.Helper()
	for _, n := range c.Nodes {
		out, err := RedisCLI(n.Addr, "CLUSTER", "NODES")
		slotOut, err2 := RedisCLI(n.Addr, "CLUSTER", "KEYSLOT", key)
		if err != nil || err2 != nil || !strings.Contains(out, "myself") {
			continue // a node that is down
		}
		var slot int
		fmt.Sscan(strings.TrimSpace(slotOut), &slot)
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
				continue
			}
			for _, r := range f[8:] {
				var lo, hi int
				if k, _ := fmt.Sscanf(r, "%d-%d", &lo, &hi); k == 2 && slot >= lo && slot <= hi || k == 1 && slot == lo {
					addr, _, _ := strings.Cut(f[1], "@")
					for _, m := range c.Nodes {
						if m.Addr == addr {
							return m
						}
					}
				}
			}
		}
		break
	}
	t.Fatalf("no master serves %q", key)
	return nil
}

func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	c := &RedisCluster{}
	for i := 0; i < 6; i++ {
		c.Nodes = append(c.Nodes, startRedis(t, fmt.Sprintf("cluster-%d", i), "--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("/usr/bin/redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		waitRedis(t, n.Addr, "CLUSTER INFO", "cluster_state:ok")
		if out, _ := RedisCLI(n.Addr, "INFO", "replication"); strings.Contains(out, "role:slave") {
			waitRedis(t, n.Addr, "INFO replication", "master_link_status:up")
		}
	}
	return c
}
