package tickle

import (
	"fmt"
	"sync"
)

// Keys supplies the key a sender tags its tickles with. A receiver may hold
// several keys per sender while keys rotate, and one sender per NS it is
// enrolled with. Implementations must be safe for concurrent use; the
// returned slice must not be modified afterwards.
type Keys interface {
	Key(sender string, keyID uint32) ([]byte, bool)
}

type keyRef struct {
	sender string
	id     uint32
}

// MapKeys is a Keys held in memory, safe for concurrent use so keys can be
// added and retired while a Listener runs. The zero value is empty and ready.
type MapKeys struct {
	mu   sync.RWMutex
	keys map[keyRef][]byte
}

// Set adds or replaces a key. The key is copied.
func (m *MapKeys) Set(sender string, keyID uint32, key []byte) error {
	if len(sender) == 0 || len(sender) > MaxSenderLen {
		return fmt.Errorf("tickle: key for sender %q: sender id of %d bytes, want 1..%d", sender, len(sender), MaxSenderLen)
	}
	if len(key) < MinKeySize {
		return fmt.Errorf("tickle: key %d for sender %q: %d bytes, need at least %d", keyID, sender, len(key), MinKeySize)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = make(map[keyRef][]byte)
	}
	m.keys[keyRef{sender, keyID}] = append([]byte(nil), key...)
	return nil
}

// Delete retires a key.
func (m *MapKeys) Delete(sender string, keyID uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.keys, keyRef{sender, keyID})
}

// Key implements Keys.
func (m *MapKeys) Key(sender string, keyID uint32) ([]byte, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	k, ok := m.keys[keyRef{sender, keyID}]
	return k, ok
}
